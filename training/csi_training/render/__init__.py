"""The rendered-versions corpus: music21 scores → note events → audio versions.

Modules (each one job):

- ``notes``: `Work`/`Part` note events from music21's bundled corpus, `extract_works` (parallel,
  de-duplicated), `save_note_corpus` / `load_note_corpus` (one ``.npz`` + JSON index, no pickle).
- ``versions``: `VersionConfig`, `VersionParams`, `sample_version` / `make_versions` (what changes
  between covers) and `apply_version` (→ `Arrangement`: note events in seconds per voice).
- ``synth``: the fast vectorised wavetable synthesiser (`synthesize`, `render_notes`, `PRESETS`).
- ``effects``: reverb, EQ, noise at an SNR, MP3 / approximate codec, loudness (`produce`).
- ``fluidsynth``: Standard MIDI File writer + FluidSynth CLI renderer with GM soundfonts.
- ``corpus``: `render_version`, `render_corpus` (FLAC + manifest.csv + versions.json, resumable).
- ``online``: `OnlineVersions`, a torch Dataset that synthesises versions in the training loop.

The names below are re-exported lazily, so importing this package pulls in neither music21 nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "NOTE_DTYPE": "notes",
    "Part": "notes",
    "Work": "notes",
    "extract_works": "notes",
    "load_note_corpus": "notes",
    "make_work": "notes",
    "save_note_corpus": "notes",
    "split_works": "notes",
    "Arrangement": "versions",
    "VersionConfig": "versions",
    "VersionParams": "versions",
    "apply_version": "versions",
    "make_versions": "versions",
    "sample_version": "versions",
    "synthesize": "synth",
    "render_corpus": "corpus",
    "render_version": "corpus",
    "read_manifest": "corpus",
    "render_fluidsynth": "fluidsynth",
    "OnlineVersions": "online",
    "collate_padded": "online",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
