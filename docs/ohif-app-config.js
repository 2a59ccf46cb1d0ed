// OHIF v3 configuration for pacs (docs/ohif.md). Tested with @ohif/app 3.13.2 from npm.
// Replace http://127.0.0.1:8042 with pacs's address as the browser reaches it.
window.config = {
  routerBasename: '/',
  // OHIF 3.13 iterates both lists at start ("appConfig.extensions is not iterable" without
  // them); empty means the extensions and modes built into the dist, nothing added.
  extensions: [],
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
