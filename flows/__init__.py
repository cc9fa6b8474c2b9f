"""Prefect orchestration: the one generic study flow and a typed flow per study kind
(``flows.study``), task runners (``flows.runners``), artifacts (``flows.artifacts``) and the team
server (``flows.server``). Importing this package, or ``flows.server``, imports neither PyTorch nor
Prefect (``dsclab run`` starts the temporary server before those imports).

Flow runs send a heartbeat every 30 s unless told otherwise (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
set here before Prefect reads its settings when this package is imported first): a team server
marks a run silent for 90 s Crashed (``flows.server.crash_automation``), and Prefect's default,
180 s, would look like a crash there."""
import os

os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


def as_package_module(namespace: dict, package_name: str) -> None:
    """Make a flow module that Prefect executed as a script (a deployment's entrypoint
    ``flows/<name>.py:<flow>`` is loaded as a module named ``<name>``) hand out the objects of the
    package module ``package_name`` instead: Dask workers, to which the task context (holding the
    flow) is pickled, cannot import ``<name>``, but can import ``flows.<name>`` wherever dsclab is
    installed. ``namespace`` is the script module's ``globals()``; nothing happens when it is the
    package module itself (or ``__main__``)."""
    if namespace["__name__"] in (package_name, "__main__"):
        return
    import importlib

    package = importlib.import_module(package_name)
    namespace.update({k: v for k, v in vars(package).items() if not k.startswith("__")})
    if hasattr(package, "__getattr__"):  # module-level lookups (flows.study.<kind>) too
        namespace["__getattr__"] = package.__getattr__
