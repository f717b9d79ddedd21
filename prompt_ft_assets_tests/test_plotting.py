"""Figures: flagged groups are marked and files are replaced whole."""

import pandas as pd

from prompt_ft_assets import plotting


def _table(flagged: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": [f"m{i}" for i in range(len(flagged))],
            "macro_f1_mean": [0.4 + 0.1 * i for i in range(len(flagged))],
            "macro_f1_std": [0.05] * len(flagged),
            "flagged_runs": flagged,
        }
    )


def _record_notes(monkeypatch) -> list[str]:
    notes: list[str] = []
    original = plotting.save_figure

    def recording(figure, path, note=None):
        notes.append(note)
        return original(figure, path, note)

    monkeypatch.setattr(plotting, "save_figure", recording)
    return notes


def test_flag_note_only_when_flagged(tmp_path, monkeypatch):
    notes = _record_notes(monkeypatch)
    plotting.bar_figure(_table([0, 2]), ["model"], "flagged", tmp_path / "flagged.png")
    plotting.bar_figure(_table([0, 0]), ["model"], "clean", tmp_path / "clean.png")
    assert notes == [plotting.FLAG_NOTE, None]


def test_figure_replaced_without_leftovers(tmp_path):
    target = tmp_path / "figures" / "f1.png"
    target.parent.mkdir()
    target.write_bytes(b"old figure")
    plotting.bar_figure(_table([1]), ["model"], "title", target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in target.parent.iterdir()) == ["f1.png"]


def test_empty_table_placeholder_figure(tmp_path):
    path = plotting.line_figure(_table([]), "model", "model", "empty", tmp_path / "empty.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
