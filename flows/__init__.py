"""Prefect orchestration: the one generic study flow and a typed flow per study kind
(``flows.study``), task runners (``flows.runners``), artifacts (``flows.artifacts``) and the team
server (``flows.server``). Importing this package, or ``flows.server``, imports neither PyTorch nor
Prefect (``dsclab run`` starts the temporary server before those imports)."""
