"""Test aids: the swtpm simulator wrapper, a throw-away EK CA, and `make demo`.

Importable from a checkout or an editable install; excluded from the built wheel
(pyproject `[tool.setuptools.packages.find] exclude`), so a certificate factory never
ships in the production package.
"""
