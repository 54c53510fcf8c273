"""The model domain: the registry and what each process serves.

- ``spec.py``: ``ModelSpec``, one alias's serving spec, parsed from the models file with readable errors;
- ``service.py``: ``Registry``, the rules (import, register a trained version, four-eyes promotion with fresh MFA,
  canary, rollback, gate override, history) over the tables in ``gateway/db/registry.py``;
- ``artifacts.py``: allowed import paths, no pickle, sha256 of every file, Ed25519 signatures, checked before loads;
- ``catalog.py``: ``ModelCatalog``, what this process serves (version, attributes, sampling defaults), fed from
  the registry and following its changes with blue/green swaps;
- ``views.py``: the API/CLI shapes (msgspec Structs).
"""
