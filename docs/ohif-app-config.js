// OHIF v3 configuration for pacs (docs/ohif.md). Tested with @ohif/app 3.13.2 from npm.
// Replace http://127.0.0.1:8042 with pacs's address as the browser reaches it.
//
// With `pacs serve --auth required`, every DICOMweb request needs a bearer token. Either sign
// users in with OIDC (OHIF's `oidc` setting; pacs --oidc-issuer), or put a *viewer* token
// (`pacs token create --name ohif --role viewer`) here: OHIF then sends it with every request.
// Anyone who can load this file can read it, so do this only where the viewer itself is
// served to the people allowed to see the studies.
const PACS_TOKEN = null; // e.g. 'pacs_0123456789ab_...'

window.config = {
  routerBasename: '/',
  // OHIF 3.13 iterates both lists at start ("appConfig.extensions is not iterable" without
  // them); empty means the extensions and modes built into the dist. The one extension below,
  // written inline, only hands PACS_TOKEN to OHIF's user authentication service, which adds
  // `Authorization: Bearer ...` to QIDO-RS, WADO-RS and image requests.
  extensions: PACS_TOKEN
    ? [{
        id: 'pacs-bearer-token',
        preRegistration({ servicesManager }) {
          servicesManager.services.userAuthenticationService.setServiceImplementation({
            getAuthorizationHeader: () => ({ Authorization: `Bearer ${PACS_TOKEN}` }),
          });
        },
      }]
    : [],
  modes: [],
  showStudyList: true,
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {
        friendlyName: 'pacs mini-server',
        name: 'pacs',
        qidoRoot: 'http://127.0.0.1:8042/dicom-web',
        wadoRoot: 'http://127.0.0.1:8042/dicom-web',
        wadoUriRoot: 'http://127.0.0.1:8042/wado',
        qidoSupportsIncludeField: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
        staticWado: false,
        dicomUploadEnabled: true,
        // dataSource.reject.series: POST {wadoRoot}/studies/{s}/series/{se}/reject/113001^DCM
        // (IOCM), for the extensions and modes that offer rejection.
        supportsReject: true,
      },
    },
  ],
  defaultDataSourceName: 'pacs',
};
