// Starts Swagger UI on /v1/docs (a file of our own: the page runs no inline script).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No spec from the address bar and no call to the public validator: this page only ever
    // shows this server's own schema.
    queryConfigEnabled: false,
    validatorUrl: null,
  });
});
