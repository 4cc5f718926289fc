"""Render arrangements with the FluidSynth CLI and General-MIDI soundfonts.

An `Arrangement` is written as a Standard MIDI File (format 1, our own small writer: one track
per voice, program, volume and pan per channel, drums on channel 10), then rendered with
``fluidsynth -ni -F out.wav -r <rate> -g <gain> <soundfont> in.mid`` to float WAV (FluidSynth's
own reverb and chorus off: the production chain adds the room), read back as mono float32.

Soundfonts are looked up by name ("FluidR3_GM", "TimGM6mb", ...) in CSI_SOUNDFONT_DIR and the
usual system folders, or given as a path. A missing binary or soundfont is a `FluidSynthError`
that names the Debian packages to install.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csi_training.render.versions import Arrangement

log = logging.getLogger(__name__)

INSTALL_HINT = "apt install fluidsynth fluid-soundfont-gm timgm6mb-soundfont"
SOUNDFONT_DIRS = (
    "/usr/share/sounds/sf2",
    "/usr/share/soundfonts",
    "/usr/share/sounds/sf3",
    "/usr/local/share/soundfonts",
)
SOUNDFONT_PACKAGES = {"FluidR3_GM": "fluid-soundfont-gm", "TimGM6mb": "timgm6mb-soundfont"}
TICKS_PER_QUARTER = 480
MICROSECONDS_PER_QUARTER = 500_000  # 120 bpm: 960 ticks per second
TICKS_PER_SECOND = TICKS_PER_QUARTER * 1_000_000 // MICROSECONDS_PER_QUARTER
DRUM_CHANNEL = 9
TAIL_S = 2.0  # silence kept after the last note-off so releases are rendered
DEFAULT_TIMEOUT_S = 300.0


class FluidSynthError(RuntimeError):
    """FluidSynth or a soundfont is missing, or a render failed."""


# ---------------------------------------------------------------------------------------------
# Standard MIDI File writer


def _vlq(value: int) -> bytes:
    """MIDI variable-length quantity."""
    if value < 0:
        raise ValueError(f"negative delta time {value}")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """[(tick, order, message)] → an MTrk chunk (events sorted by tick, then order)."""
    body = bytearray()
    now = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        body += _vlq(tick - now) + message
        now = tick
    body += _vlq(0) + b"\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def _assign_channels(arrangement: Arrangement) -> list[int]:
    """A MIDI channel per voice: drums on 10, melodic voices on the other 15 (shared by program
    when there are more voices than channels)."""
    channels: list[int] = []
    by_program: dict[int, int] = {}
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    for voice in arrangement.voices:
        if voice.spec.is_drums:
            channels.append(DRUM_CHANNEL)
        elif free:
            channels.append(free.pop(0))
            by_program.setdefault(voice.spec.program, channels[-1])
        else:  # more voices than channels: share one with the same program, else the last one
            channels.append(by_program.get(voice.spec.program, 15))
    return channels


def midi_bytes(arrangement: Arrangement, tail_s: float = TAIL_S) -> bytes:
    """An arrangement as a format-1 Standard MIDI File at 120 bpm (ticks are 1/960 s)."""
    channels = _assign_channels(arrangement)
    end_tick = 0
    tracks = []
    programmed: set[int] = set()
    for voice, ch in zip(arrangement.voices, channels):
        ev = voice.events
        setup: list[tuple[int, int, bytes]] = []
        if ch not in programmed:
            programmed.add(ch)
            volume = int(np.clip(round(127 * 10 ** (voice.spec.gain_db / 40.0)), 1, 127))  # GM: 40·log10 law
            pan = int(np.clip(round(64 + 63 * voice.spec.pan), 0, 127))
            if ch != DRUM_CHANNEL:
                setup.append((0, 0, bytes([0xC0 | ch, voice.spec.program & 0x7F])))
            setup += [
                (0, 0, bytes([0xB0 | ch, 7, volume])),
                (0, 0, bytes([0xB0 | ch, 10, pan])),
                (0, 0, bytes([0xB0 | ch, 91, 0])),  # reverb send
                (0, 0, bytes([0xB0 | ch, 93, 0])),  # chorus send
            ]
        if len(ev):
            on = np.round(ev["onset_s"] * TICKS_PER_SECOND).astype(np.int64)
            off = np.maximum(
                np.round((ev["onset_s"] + ev["duration_s"]) * TICKS_PER_SECOND).astype(np.int64), on + 1
            )
            pitch = np.clip(ev["pitch"].astype(np.int64), 0, 127)
            # a repeated pitch ends the previous note first (note-offs sort before note-ons)
            order = np.lexsort((on, pitch))
            same_next = np.zeros(len(on), dtype=bool)
            same_next[order[:-1]] = pitch[order[:-1]] == pitch[order[1:]]
            next_on = np.full(len(on), np.iinfo(np.int64).max)
            next_on[order[:-1]] = on[order[1:]]
            off = np.where(same_next & (next_on < off), np.maximum(next_on, on + 1), off)
            if voice.spec.is_drums:
                off = np.minimum(off, on + TICKS_PER_SECOND // 10)
            vel = np.clip(ev["velocity"].astype(np.int64), 1, 127)
            for a, b, p, v in zip(on.tolist(), off.tolist(), pitch.tolist(), vel.tolist()):
                setup.append((a, 2, bytes([0x90 | ch, p, v])))
                setup.append((b, 1, bytes([0x80 | ch, p, 0])))
            end_tick = max(end_tick, int(off.max()))
        tracks.append(setup)
    end_tick += int(tail_s * TICKS_PER_SECOND)
    tempo = (0, 0, b"\xff\x51\x03" + MICROSECONDS_PER_QUARTER.to_bytes(3, "big"))
    # the conductor track carries the tempo and an end marker after the tail
    conductor = _track([tempo, (end_tick, 0, b"\xff\x01\x04tail")])
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks) + 1, TICKS_PER_QUARTER)
    return header + conductor + b"".join(_track(t) for t in tracks)


def write_midi(arrangement: Arrangement, path: str | os.PathLike[str]) -> None:
    Path(path).write_bytes(midi_bytes(arrangement))


# ---------------------------------------------------------------------------------------------
# FluidSynth


def find_fluidsynth() -> str:
    path = shutil.which("fluidsynth")
    if path is None:
        raise FluidSynthError(f"the fluidsynth program is not on PATH; install it ({INSTALL_HINT})")
    return path


def find_soundfont(name: str, search_dirs: Sequence[str] | None = None) -> Path:
    """A soundfont by path or by name ("FluidR3_GM" → FluidR3_GM.sf2/.sf3 in the soundfont folders)."""
    candidate = Path(name)
    if candidate.suffix.lower() in (".sf2", ".sf3"):
        if candidate.is_file():
            return candidate
        raise FluidSynthError(f"soundfont file {candidate} does not exist")
    dirs = list(search_dirs) if search_dirs is not None else []
    if search_dirs is None:
        env = os.environ.get("CSI_SOUNDFONT_DIR")
        dirs = [*([env] if env else []), *SOUNDFONT_DIRS]
    for folder in dirs:
        for suffix in (".sf2", ".sf3"):
            path = Path(folder) / f"{name}{suffix}"
            if path.is_file():
                return path
    package = SOUNDFONT_PACKAGES.get(name, "a General-MIDI soundfont package")
    raise FluidSynthError(
        f"soundfont {name!r} not found in {dirs}; install {package} ({INSTALL_HINT}) or set CSI_SOUNDFONT_DIR"
    )


def available_soundfonts(names: Sequence[str] = tuple(SOUNDFONT_PACKAGES)) -> list[str]:
    """The soundfont names of `names` that are installed."""
    found = []
    for name in names:
        try:
            find_soundfont(name)
            found.append(name)
        except FluidSynthError:
            pass
    return found


def render_fluidsynth(
    arrangement: Arrangement,
    sample_rate: int,
    soundfont: str = "FluidR3_GM",
    gain: float = 0.5,
    duration_s: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> np.ndarray:
    """Render with FluidSynth → float32 [n] mono at sample_rate.

    duration_s: cut or zero-pad to this length (None: what FluidSynth renders, the arrangement
    plus TAIL_S). Temporary files are removed whatever happens.
    """
    import soundfile as sf

    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    binary = find_fluidsynth()
    sf_path = find_soundfont(soundfont)
    with tempfile.TemporaryDirectory(prefix="csi-fluidsynth-") as tmp:
        mid, wav = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        write_midi(arrangement, mid)
        cmd = [binary, "-ni", "-q", "-R", "0", "-C", "0", "-g", f"{gain:g}", "-r", str(sample_rate),
               "-T", "wav", "-O", "float", "-F", str(wav), str(sf_path), str(mid)]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, capture_output=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise FluidSynthError(f"fluidsynth timed out after {timeout_s:.0f} s") from exc
        if proc.returncode != 0 or not wav.is_file():
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-800:]
            raise FluidSynthError(f"fluidsynth failed (exit {proc.returncode}): {err}")
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise FluidSynthError(f"fluidsynth wrote {rate} Hz instead of the requested {sample_rate} Hz")
    y = audio.mean(axis=1).astype(np.float32)
    if duration_s is not None:
        n = round(duration_s * sample_rate)
        y = y[:n] if len(y) >= n else np.concatenate([y, np.zeros(n - len(y), np.float32)])
    return y
