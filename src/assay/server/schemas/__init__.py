"""The bodies of the REST API, one module per resource: what a request may send and what it
gets back. The published OpenAPI schema is made of them (a class name is its component name);
the route modules in :mod:`assay.server.routes` hold only routes.

The MLflow-compatible routes take MLflow's bodies (:mod:`assay.server.schemas.mlflow`), which
are not in the published schema."""
