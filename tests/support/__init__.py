"""What the tests import by name: the store URIs and empty databases (:mod:`.databases`), waits
stretched by the machine's load (:mod:`.timing`), workers and the FAST settings (:mod:`.jobs`),
server processes and in-process apps (:mod:`.servers`), and the helpers of one area (traces,
filters, scoring, hostile data). Fixtures are not here: they stay in the ``conftest.py`` files,
where pytest finds them, and are built from these helpers.

``jobmods/`` holds the job modules the tests' workers import by name (``--jobs-module
jobmods_life``): it is a folder on ``sys.path`` (pyproject's ``pythonpath``) and on the
``PYTHONPATH`` of every worker and server subprocess (:func:`support.jobs.fast_env`), not a
part of this package, so those names stay what a deployment's would be: top-level modules."""
