"""bench/tables.py: README's benchmark tables are exactly what the committed JSON says."""
from __future__ import annotations

from bench import tables


def test_readme_tables_match_the_committed_json():
    """Every ``<!-- table:NAME -->`` block in README.md equals its regeneration from
    bench/results/*.json (run ``python bench/tables.py --write`` after a benchmark)."""
    assert tables.main(["--check"]) == 0


def test_overhead_table_numbers():
    """Ratios are computed from the JSON, not copied: 0.3 s / 0.2 s = 1.50, 0.18 / 0.12 = 1.50,
    and per row 1.50 / (1572864 / 786432 = 2) = 0.75."""
    d = {"variants": {
        "ppo": {"rows_per_iteration": 786432, "iter_s": 0.2, "update_s": 0.12},
        "cpo": {"rows_per_iteration": 1572864, "iter_s": 0.3, "update_s": 0.18}}}
    lines = tables.overhead(d).splitlines()
    assert lines[2] == "| PPO | 786 k | 200 | 1.00 | 1.00 | 1.00 |"
    assert lines[3] == "| CPO (coupling on all leader rows) | 1.57 M | 300 | 1.50 | 1.50 | 0.75 |"


def test_rewrite_replaces_only_marked_blocks(tmp_path):
    """Text around the markers is kept; a block whose table is unknown is an error."""
    readme = tmp_path / "README.md"
    body = tables.render("gpu_fast_h100")
    assert body is not None
    readme.write_text("intro\n<!-- table:gpu_fast_h100 -->\nstale\n<!-- /table -->\noutro\n")
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert tables.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == f"intro\n<!-- table:gpu_fast_h100 -->\n{body}\n<!-- /table -->\noutro\n"
    readme.write_text("<!-- table:nope -->\nx\n<!-- /table -->\n")
    try:
        tables.main(["--check", "--readme", str(readme)])
    except SystemExit as err:
        assert "unknown table 'nope'" in str(err)
    else:
        raise AssertionError("an unknown table name must fail")


def test_an_empty_block_is_filled_without_swallowing_the_next_one(tmp_path):
    """A freshly added empty block gets its table, and the text and block after it stay put
    (a regression: the first version of the pattern ran on to the next block's end marker)."""
    readme = tmp_path / "README.md"
    fast, scaling = tables.render("gpu_fast_h100"), tables.render("gpu_scaling_h100")
    readme.write_text("a\n<!-- table:gpu_fast_h100 -->\n<!-- /table -->\nmiddle text\n"
                      "<!-- table:gpu_scaling_h100 -->\nold\n<!-- /table -->\nz\n")
    assert tables.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == (f"a\n<!-- table:gpu_fast_h100 -->\n{fast}\n<!-- /table -->\nmiddle text\n"
                                  f"<!-- table:gpu_scaling_h100 -->\n{scaling}\n<!-- /table -->\nz\n")
