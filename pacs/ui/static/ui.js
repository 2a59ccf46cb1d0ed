// Progressive enhancement only: every page works without this script.
// A submitted action form disables its button, so a double click posts once.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
  for (const button of form.querySelectorAll("button[type=submit]")) {
    // after the submission has started, so the button's own name/value is still sent
    setTimeout(() => { button.disabled = true; }, 0);
  }
});
// After an action, move focus to its notice, so keyboard and screen reader users hear it.
window.addEventListener("DOMContentLoaded", () => {
  const notice = document.querySelector("main .notice");
  if (notice) {
    notice.setAttribute("tabindex", "-1");
    notice.focus({ preventScroll: false });
  }
});
