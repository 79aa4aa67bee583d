"""Code that runs inside assay's ``sandbox`` executor. A package of its own, outside ``assay``,
because the sandbox child never imports the real ``assay`` (it sees a stand-in)."""
