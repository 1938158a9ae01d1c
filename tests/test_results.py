from pathlib import Path

from cifar_lib.results import ROOT, results_markdown, updated_readme


def test_readme_results_block_is_made_from_results_folder():
    readme = (ROOT / "README.md").read_text()
    assert updated_readme(readme) == readme, (
        "README.md's results block is stale: run python -m cifar_lib.results"
    )


def test_results_markdown_without_files(tmp_path: Path):
    assert results_markdown(tmp_path) == "No measured results yet."
