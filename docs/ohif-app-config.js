// OHIF v3 configuration for pacs (docs/ohif.md)
window.config = {
  routerBasename: '/',
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
      },
    },
  ],
  defaultDataSourceName: 'pacs',
};

