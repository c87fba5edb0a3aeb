// Starts Swagger UI on the gateway's merged OpenAPI document. A file, not an inline script:
// the page's Content-Security-Policy allows only the gateway's own scripts.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
    // A token pasted into "Authorize" stays in this tab only.
    persistAuthorization: false,
    tryItOutEnabled: false,
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
