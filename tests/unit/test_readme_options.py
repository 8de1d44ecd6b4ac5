"""The README's option tables say what the declarations say (run `make docs` to fix)."""

from __future__ import annotations

from tests.readme_options import README, with_tables


def test_readme_option_tables_are_generated_from_the_declarations() -> None:
    readme = README.read_text()
    assert with_tables(readme) == readme, "the README's option tables are stale: make docs"
