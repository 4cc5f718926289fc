"""Versions of a work: what changes between covers, sampled as parameters and applied to note events.

`sample_version` draws a `VersionParams`: key (±6 semitones), tempo (×0.75-1.3, with slow drift,
swing and timing/velocity humanisation), structure (sections dropped, repeated, reordered, a
later start), instrumentation (General-MIDI program + fast-synth preset per voice, balance,
octave), an accompaniment derived from the work's own harmony (bass line, chords in several
patterns, a drum groove for its meter), and the production (reverb, EQ, noise, codec, loudness,
start offset) that `effects` applies to the audio.

`apply_version` is the symbolic part: it returns an `Arrangement` (note events in seconds per
voice) that either renderer (`synth`, `fluidsynth`) turns into audio.

Everything is deterministic given (seed, work_id, version index): `make_versions` seeds each
version from a `SeedSequence` of those three, and the params carry the seed of the randomness
`apply_version` itself uses (humanisation, tempo drift).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from csi_training.render.notes import Work, beats_to_seconds
from csi_training.render.synth import BRIGHTNESS_STEPS, DRUM_KEYS, EVENT_DTYPE, preset_for_program

# Note events on the score's timeline, before a version maps them to seconds.
BEAT_DTYPE = np.dtype(
    [("onset_beats", "<f8"), ("duration_beats", "<f8"), ("pitch", "<i2"), ("velocity", "u1")]
)

# General-MIDI programs by role (a curated subset that every GM soundfont renders well).
MELODY_PROGRAMS = (0, 1, 4, 6, 11, 12, 16, 19, 21, 22, 24, 25, 26, 40, 41, 52, 56, 60, 64, 65, 66, 68, 71,
                   73, 74, 75, 78, 80, 81, 105, 109)  # fmt: skip
HARMONY_PROGRAMS = (0, 1, 4, 6, 16, 19, 21, 24, 25, 40, 41, 42, 46, 48, 49, 52, 53, 60, 68, 70, 71, 89)
BASS_PROGRAMS = (32, 33, 34, 35, 38, 42, 43, 58)
ORIGINAL_ENSEMBLE_PROGRAMS = (0, 6, 19, 48, 52)  # piano, harpsichord, church organ, strings, choir
CHORD_PROGRAMS = (0, 1, 4, 6, 16, 19, 21, 24, 25, 46, 48, 49, 52, 88, 89)
BASS_PATTERNS = ("root", "root-fifth", "walking", "octaves")
CHORD_PATTERNS = ("pad", "block", "offbeat", "arpeggio", "strum")
DRUM_PATTERNS = ("backbeat", "light", "folk")
STRUCTURE_CHANGES = ("drop", "repeat", "start_later", "rotate")
NOISE_TYPES = ("white", "pink", "brown", "babble")
CODECS = ("none", "mp3", "lowpass")

MELODIC_RANGE = (21, 108)  # piano range: voices are folded into it by octaves
BASS_LOW = 33  # lowest bass root (A1)
CHORD_LOW = 55  # lowest chord tone (G3)
MAX_HARMONY_SEGMENT_S = 3.2  # the harmonic rhythm is one bar, halved while longer than this


@dataclasses.dataclass(frozen=True)
class VersionConfig:
    """Ranges and probabilities of the version sampler (defaults: covers of folk/classical pieces)."""

    original_first: bool = True  # version 0 of `make_versions` is the work as written
    transpose_max: int = 6  # semitones, uniform in [-max, max]
    tempo_range: tuple[float, float] = (0.75, 1.3)  # factor, log-uniform
    tempo_drift_max: float = 0.06  # relative amplitude of slow tempo fluctuation
    swing_probability: float = 0.15
    swing_max: float = 0.3  # off-beat eighths move from 1/2 to (1 + swing)/2 of the beat (1/3: triplets)
    humanize_max_s: float = 0.02  # onset jitter std
    melody_variation_probability: float = 0.5
    melody_variation_max: float = 0.12  # share of melody notes dropped or ornamented
    velocity_jitter_max: float = 0.15  # log-normal velocity jitter std
    accent_max: int = 15  # extra velocity on beats
    structure_change_probability: float = 0.6
    min_duration_s: float = 30.0  # the form is played again until the version lasts this long
    max_form_repeats: int = 4
    part_keep_probability: float = 0.75
    melody_octave_probability: float = 0.15
    accompaniment_probability_solo: float = 0.7  # when only the melody is kept
    accompaniment_probability_ensemble: float = 0.25
    drums_probability: float = 0.35
    reverb_probability: float = 0.85
    rt60_range: tuple[float, float] = (0.2, 2.5)  # seconds, log-uniform
    wet_range: tuple[float, float] = (0.05, 0.5)
    eq_tilt_max_db: float = 2.0  # dB per octave around 1 kHz
    noise_probability: float = 0.5
    snr_range: tuple[float, float] = (5.0, 35.0)  # dB
    codec_probabilities: tuple[float, float, float] = (0.5, 0.3, 0.2)  # none, mp3, lowpass
    mp3_kbps: tuple[int, ...] = (24, 32, 48, 64, 96, 128)
    lowpass_range: tuple[float, float] = (2500.0, 7000.0)  # Hz
    loudness_range: tuple[float, float] = (-30.0, -14.0)  # dBFS RMS
    start_offset_probability: float = 0.3
    start_offset_max_s: float = 4.0
    soundfonts: tuple[str, ...] = ("FluidR3_GM", "TimGM6mb")

    def __post_init__(self) -> None:
        lo, hi = self.tempo_range
        if not 0 < lo <= hi:
            raise ValueError(f"tempo_range must be 0 < low <= high, got {self.tempo_range}")
        if self.transpose_max < 0 or self.min_duration_s < 0:
            raise ValueError("transpose_max and min_duration_s must be >= 0")
        if abs(sum(self.codec_probabilities) - 1.0) > 1e-6 or min(self.codec_probabilities) < 0:
            raise ValueError(
                f"codec_probabilities must be 3 probabilities summing to 1, got {self.codec_probabilities}"
            )
        if not self.soundfonts:
            raise ValueError("soundfonts must name at least one soundfont")


@dataclasses.dataclass(frozen=True)
class VoiceSpec:
    """One voice of a version.

    source: "part:<i>" (the work's part i), or an added "bass", "chords" or "drums" voice;
    pattern: the added voice's pattern (BASS/CHORD/DRUM_PATTERNS), "" for parts;
    program: General-MIDI program (drums: ignored, channel 10); preset: the fast synth's timbre;
    gain_db: level in the mix; octave: octave shift on top of the transposition; pan: -1..1
    (FluidSynth only, the mix is mono); brightness: the fast synth's spectral tilt step.
    """

    source: str
    pattern: str
    program: int
    preset: str
    gain_db: float
    octave: int = 0
    pan: float = 0.0
    brightness: int = 0

    @property
    def is_drums(self) -> bool:
        return self.source == "drums"


@dataclasses.dataclass(frozen=True)
class VersionParams:
    """Everything that makes one version differ from the written work (JSON-serialisable)."""

    work_id: str
    version_index: int
    seed: int  # seeds apply_version's own randomness (humanisation, drift)
    original: bool
    transpose: int  # semitones
    tempo_factor: float  # > 1 is faster
    tempo_drift: float
    swing: float  # 0..~0.33: off-beat eighths delayed (triplet feel at 1/3)
    humanize_s: float
    melody_variation: float  # share of melody notes dropped (merged into the previous) or ornamented
    velocity_jitter: float
    accent: int
    structure: tuple[int, ...]  # section indices in playing order
    voices: tuple[VoiceSpec, ...]
    soundfont: str
    reverb_rt60_s: float  # 0: dry
    reverb_wet: float
    eq_tilt_db: float
    noise: str  # "none" or one of NOISE_TYPES
    noise_snr_db: float  # (0 when noise is "none")
    codec: str  # one of CODECS
    codec_kbps: int  # mp3 bitrate
    lowpass_hz: float  # the "lowpass" codec's cut-off
    loudness_dbfs: float
    start_offset_s: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["structure"] = list(self.structure)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionParams:
        d = dict(d)
        d["structure"] = tuple(int(i) for i in d["structure"])
        d["voices"] = tuple(VoiceSpec(**v) for v in d["voices"])
        return cls(**d)


@dataclasses.dataclass(frozen=True, eq=False)
class VoiceEvents:
    """A voice of an arrangement: its spec and its events (synth.EVENT_DTYPE, seconds, sorted)."""

    spec: VoiceSpec
    events: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Arrangement:
    """A version as note events: voices in seconds from the version's start."""

    voices: tuple[VoiceEvents, ...]

    @property
    def duration_s(self) -> float:
        """End of the last note-off (releases and reverb tails come on top)."""
        ends = [
            float(np.max(v.events["onset_s"] + v.events["duration_s"])) for v in self.voices if len(v.events)
        ]
        return max(ends, default=0.0)

    @property
    def n_notes(self) -> int:
        return sum(len(v.events) for v in self.voices)


# ---------------------------------------------------------------------------------------------
# Seeding


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that does not change between runs (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def version_rng(seed: int, work_id: str, version_index: int, epoch: int = 0) -> np.random.Generator:
    """The generator of one version: a function of (seed, work_id, version index, epoch) only."""
    h = stable_hash(work_id)
    return np.random.default_rng(
        np.random.SeedSequence(
            [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, h & 0xFFFFFFFF, h >> 32, version_index, epoch]
        )
    )


# ---------------------------------------------------------------------------------------------
# Sampling


def _meter_kind(work: Work) -> str:
    num, den = work.meter
    if num == 0:
        return "free"
    if work.beat_beats == 1.5 or (den == 8 and num % 3 == 0):
        return "compound"
    if num in (3, 9):
        return "triple"
    return "duple"


def _sample_structure(
    work: Work, rng: np.random.Generator, config: VersionConfig, tempo_factor: float
) -> tuple[int, ...]:
    n = work.n_sections
    order = list(range(n))
    if n >= 2 and rng.random() < config.structure_change_probability:
        change = STRUCTURE_CHANGES[int(rng.integers(len(STRUCTURE_CHANGES)))]
        if change == "drop" and n >= 3:
            width = int(rng.integers(1, max(2, n // 3 + 1)))
            start = int(rng.integers(0, n - width + 1))
            order = order[:start] + order[start + width :]
        elif change == "repeat":
            width = int(rng.integers(1, min(2, n) + 1))
            start = int(rng.integers(0, n - width + 1))
            block = order[start : start + width]
            order = order[: start + width] + block + order[start + width :]
        elif change == "start_later":
            order = order[int(rng.integers(1, max(2, n // 2 + 1))) :]
        else:  # rotate: start later, play the opening at the end
            k = int(rng.integers(1, n))
            order = order[k:] + order[:k]
        if not order:
            order = list(range(n))
    # play the form again (as folk musicians do) until the version is long enough
    section_s = np.diff(work.sections_s) / tempo_factor
    form = list(order)
    total = float(section_s[form].sum())
    repeats = 1
    while total < config.min_duration_s and repeats < config.max_form_repeats:
        order += form
        total += float(section_s[form].sum())
        repeats += 1
    return tuple(order)


def _original_programs(work: Work) -> list[int]:
    """The instruments 'as written': the score's programs, else one drawn per work (not per
    version): a melody instrument for a lone tune, one ensemble sound for a part-song."""
    rng = np.random.default_rng(stable_hash("instrumentation:" + work.work_id))
    if len(work.parts) == 1:
        fallback = [MELODY_PROGRAMS[int(rng.integers(len(MELODY_PROGRAMS)))]]
    else:
        fallback = [ORIGINAL_ENSEMBLE_PROGRAMS[int(rng.integers(len(ORIGINAL_ENSEMBLE_PROGRAMS)))]] * len(
            work.parts
        )
    return [part.program if part.program >= 0 else fallback[i] for i, part in enumerate(work.parts)]


def _voice(
    source: str, pattern: str, program: int, gain_db: float, rng: np.random.Generator, **kw: Any
) -> VoiceSpec:
    preset = "drums" if source == "drums" else preset_for_program(program)
    return VoiceSpec(
        source=source,
        pattern=pattern,
        program=program,
        preset=preset,
        gain_db=round(float(gain_db), 2),
        pan=round(float(kw.get("pan", rng.uniform(-0.6, 0.6))), 2),
        octave=int(kw.get("octave", 0)),
        brightness=int(kw.get("brightness", rng.choice(BRIGHTNESS_STEPS))),
    )


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def sample_version(
    work: Work,
    rng: np.random.Generator,
    config: VersionConfig = VersionConfig(),
    *,
    original: bool = False,
    version_index: int = 0,
) -> VersionParams:
    """Draw one version of `work`. original=True: the work as written (no key/tempo/structure
    change, the score's instruments, a clean production) — still played through to min_duration_s."""
    seed = int(rng.integers(2**63))
    if original:
        programs = _original_programs(work)
        voices = [
            _voice(f"part:{i}", "", prog, 0.0 if i == 0 else -3.0, rng, pan=0.0, brightness=0)
            for i, prog in enumerate(programs)
        ]
        structure = _sample_structure(
            work, rng, dataclasses.replace(config, structure_change_probability=0.0), 1.0
        )
        return VersionParams(
            work_id=work.work_id,
            version_index=version_index,
            seed=seed,
            original=True,
            transpose=0,
            tempo_factor=1.0,
            tempo_drift=0.0,
            swing=0.0,
            humanize_s=0.0,
            melody_variation=0.0,
            velocity_jitter=0.0,
            accent=0,
            structure=structure,
            voices=tuple(voices),
            soundfont=config.soundfonts[0],
            reverb_rt60_s=round(float(rng.uniform(0.3, 1.2)), 3),
            reverb_wet=round(float(rng.uniform(0.1, 0.3)), 3),
            eq_tilt_db=0.0,
            noise="none",
            noise_snr_db=0.0,
            codec="none",
            codec_kbps=0,
            lowpass_hz=0.0,
            loudness_dbfs=-20.0,
            start_offset_s=0.0,
        )

    transpose = int(rng.integers(-config.transpose_max, config.transpose_max + 1))
    lo, hi = config.tempo_range
    tempo_factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    drift = float(rng.uniform(0, config.tempo_drift_max))
    kind = _meter_kind(work)
    swing = (
        float(rng.uniform(0.1, config.swing_max))
        if kind in ("duple", "triple") and work.beat_beats == 1.0 and rng.random() < config.swing_probability
        else 0.0
    )
    humanize = float(rng.uniform(0, config.humanize_max_s))
    variation = (
        float(rng.uniform(0, config.melody_variation_max))
        if rng.random() < config.melody_variation_probability
        else 0.0
    )
    vel_jitter = float(rng.uniform(0, config.velocity_jitter_max))
    accent = int(rng.integers(0, config.accent_max + 1))
    structure = _sample_structure(work, rng, config, tempo_factor)

    # instrumentation: the melody always, other parts each with part_keep_probability
    voices = []
    melody_octave = 0
    if rng.random() < config.melody_octave_probability:
        melody_octave = int(_pick(rng, (-1, 1)))
    melody_program = _pick(rng, MELODY_PROGRAMS)
    voices.append(
        _voice(
            "part:0",
            "",
            melody_program,
            rng.uniform(-1, 1),
            rng,
            pan=rng.uniform(-0.2, 0.2),
            octave=melody_octave,
        )
    )
    shared = _pick(rng, HARMONY_PROGRAMS) if rng.random() < 0.4 else None
    kept_others = 0
    for i in range(1, len(work.parts)):
        if rng.random() < config.part_keep_probability:
            program = shared if shared is not None else _pick(rng, HARMONY_PROGRAMS)
            voices.append(_voice(f"part:{i}", "", program, rng.uniform(-8, -1), rng))
            kept_others += 1
    p_acc = (
        config.accompaniment_probability_solo
        if kept_others == 0
        else config.accompaniment_probability_ensemble
    )
    if rng.random() < p_acc:
        with_bass = rng.random() < 0.8
        with_chords = rng.random() < 0.85 or not with_bass
        if with_bass:
            voices.append(
                _voice("bass", _pick(rng, BASS_PATTERNS), _pick(rng, BASS_PROGRAMS), rng.uniform(-9, -3), rng)
            )
        if with_chords:
            voices.append(
                _voice(
                    "chords",
                    _pick(rng, CHORD_PATTERNS),
                    _pick(rng, CHORD_PROGRAMS),
                    rng.uniform(-14, -7),
                    rng,
                )
            )
    if kind != "free" and rng.random() < config.drums_probability:
        voices.append(_voice("drums", _pick(rng, DRUM_PATTERNS), 0, rng.uniform(-16, -8), rng, brightness=0))

    # production
    if rng.random() < config.reverb_probability:
        rt60 = float(np.exp(rng.uniform(*np.log(config.rt60_range))))
        wet = float(rng.uniform(*config.wet_range))
    else:
        rt60 = wet = 0.0
    if rng.random() < config.noise_probability:
        noise, snr = str(_pick(rng, NOISE_TYPES)), float(rng.uniform(*config.snr_range))
    else:
        noise, snr = "none", 0.0
    codec = CODECS[int(rng.choice(len(CODECS), p=np.asarray(config.codec_probabilities)))]
    kbps = int(_pick(rng, config.mp3_kbps)) if codec == "mp3" else 0
    lowpass = float(rng.uniform(*config.lowpass_range)) if codec == "lowpass" else 0.0
    start_offset = (
        float(rng.uniform(0, config.start_offset_max_s))
        if rng.random() < config.start_offset_probability
        else 0.0
    )
    return VersionParams(
        work_id=work.work_id,
        version_index=version_index,
        seed=seed,
        original=False,
        transpose=transpose,
        tempo_factor=round(tempo_factor, 4),
        tempo_drift=round(drift, 4),
        swing=round(swing, 3),
        humanize_s=round(humanize, 4),
        melody_variation=round(variation, 3),
        velocity_jitter=round(vel_jitter, 3),
        accent=accent,
        structure=structure,
        voices=tuple(voices),
        soundfont=str(_pick(rng, config.soundfonts)),
        reverb_rt60_s=round(rt60, 3),
        reverb_wet=round(wet, 3),
        eq_tilt_db=round(float(rng.uniform(-1, 1) * config.eq_tilt_max_db), 2),
        noise=noise,
        noise_snr_db=round(snr, 2),
        codec=codec,
        codec_kbps=kbps,
        lowpass_hz=round(lowpass, 1),
        loudness_dbfs=round(float(rng.uniform(*config.loudness_range)), 2),
        start_offset_s=round(start_offset, 3),
    )


def make_versions(
    work: Work,
    n_versions: int,
    seed: int = 0,
    config: VersionConfig = VersionConfig(),
    epoch: int = 0,
) -> list[VersionParams]:
    """Versions 0..n-1 of a work; version 0 is the original when config.original_first (and epoch 0)."""
    return [
        sample_version(
            work,
            version_rng(seed, work.work_id, k, epoch),
            config,
            original=(k == 0 and config.original_first and epoch == 0),
            version_index=k,
        )
        for k in range(n_versions)
    ]


# ---------------------------------------------------------------------------------------------
# Harmony of the work (for the accompaniment)

_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _pc_histogram(events: np.ndarray, start: float, end: float) -> np.ndarray:
    """Duration-weighted pitch-class histogram [12] of the events' overlap with [start, end) beats."""
    on = events["onset_beats"]
    off = on + events["duration_beats"]
    overlap = np.clip(np.minimum(off, end) - np.maximum(on, start), 0, None)
    return np.bincount(events["pitch"].astype(np.int64) % 12, weights=overlap, minlength=12)


def estimate_key(work: Work) -> tuple[int, bool]:
    """(tonic pitch class, is_minor) by Krumhansl-Kessler profile correlation."""
    events = work.all_events()
    hist = _pc_histogram(events, 0.0, work.duration_beats)
    best, best_key = -np.inf, (0, False)
    for minor, profile in ((False, _MAJOR_PROFILE), (True, _MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1]) if hist.std() > 0 else 0.0
            if r > best:
                best, best_key = r, (tonic, minor)
    return best_key


def _bar_beats(work: Work) -> float:
    num, den = work.meter
    return num * 4.0 / den if num else 4.0


def harmony_segments(work: Work) -> np.ndarray:
    """Segment boundaries in beats [G + 1] for the chord estimate: bars (or half/quarter bars when a
    bar lasts longer than MAX_HARMONY_SEGMENT_S), aligned on the first downbeat."""
    bar = _bar_beats(work)
    seg = bar
    spb = 60.0 / work.tempo_bpm
    while seg * spb > MAX_HARMONY_SEGMENT_S and seg / 2 >= work.beat_beats:
        seg /= 2
    end = work.duration_beats
    phase = float(work.sections_beats[1] % seg) if work.n_sections > 1 else 0.0
    grid = np.arange(phase, end, seg)
    bounds = np.unique(np.concatenate([[0.0], grid[grid > 0], [end]]))
    return bounds


@functools.lru_cache(maxsize=64)  # keyed by the Work object itself (identity); bass + chords share it
def estimate_chords(work: Work) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment bounds [G + 1] in beats, chord root pitch class [G], is_minor [G]).

    Each segment's duration-weighted pitch classes (bass notes counted double) are matched to the
    24 major/minor triads; chords of the estimated key get a bonus, empty segments hold the
    previous chord.
    """
    events = work.all_events()
    bounds = harmony_segments(work)
    tonic, minor = estimate_key(work)
    scale = np.array([0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11])
    diatonic = set(((scale + tonic) % 12).tolist())
    templates, chords = [], []
    for root in range(12):
        for is_minor in (False, True):
            tones = {root, (root + (3 if is_minor else 4)) % 12, (root + 7) % 12}
            t = np.full(12, -0.6)
            t[list(tones)] = 1.0
            t[root] += 0.2
            templates.append(t)
            bonus = 0.15 if tones <= diatonic else 0.0
            if root == tonic and is_minor == minor:
                bonus += 0.1
            chords.append((root, is_minor, bonus))
    templates_arr = np.stack(templates)
    bonus_arr = np.array([c[2] for c in chords])
    roots = np.zeros(len(bounds) - 1, dtype=np.int64)
    minors = np.zeros(len(bounds) - 1, dtype=bool)
    previous = int(np.argmax([(c[0] == tonic and c[1] == minor) for c in chords]))
    low = events[events["pitch"] <= np.percentile(events["pitch"], 25)] if len(events) else events
    for g in range(len(bounds) - 1):
        hist = _pc_histogram(events, bounds[g], bounds[g + 1]) + _pc_histogram(low, bounds[g], bounds[g + 1])
        total = hist.sum()
        if total > 0:
            scores = templates_arr @ (hist / total) + bonus_arr
            scores[previous] += 0.05  # harmonic inertia
            previous = int(np.argmax(scores))
        roots[g], minors[g] = chords[previous][0], chords[previous][1]
    return bounds, roots, minors


# ---------------------------------------------------------------------------------------------
# Accompaniment patterns (beat domain)


def _events_from_rows(rows: list[tuple[float, float, int, int]]) -> np.ndarray:
    ev = np.zeros(len(rows), dtype=BEAT_DTYPE)
    if rows:
        arr = np.array(rows, dtype=np.float64)
        ev["onset_beats"], ev["duration_beats"] = arr[:, 0], arr[:, 1]
        ev["pitch"], ev["velocity"] = arr[:, 2], np.clip(arr[:, 3], 1, 127)
        ev = ev[np.argsort(ev["onset_beats"], kind="stable")]
    return ev


def _beats_in(start: float, end: float, step: float) -> np.ndarray:
    return np.arange(start, end - 1e-9, step)


def bass_line(work: Work, pattern: str) -> np.ndarray:
    """An added bass voice following the estimated chords, BEAT_DTYPE."""
    bounds, roots, minors = estimate_chords(work)
    beat = work.beat_beats or 1.0
    rows: list[tuple[float, float, int, int]] = []
    for g in range(len(roots)):
        a, b = bounds[g], bounds[g + 1]
        root = BASS_LOW + (int(roots[g]) - BASS_LOW) % 12
        third = root + (3 if minors[g] else 4)
        fifth = root + 7 if root + 7 <= BASS_LOW + 14 else root - 5
        nxt = BASS_LOW + (int(roots[(g + 1) % len(roots)]) - BASS_LOW) % 12
        beats = _beats_in(a, b, beat)
        if pattern == "root" or len(beats) == 0:
            rows.append((a, b - a, root, 96))
        elif pattern == "root-fifth":
            for j, x in enumerate(beats):
                rows.append((x, min(beat, b - x) * 0.9, root if j % 2 == 0 else fifth, 96 if j == 0 else 84))
        elif pattern == "walking":
            line = [root, third, fifth, nxt - 1 if nxt > root else nxt + 1]
            for j, x in enumerate(beats):
                rows.append((x, min(beat, b - x) * 0.95, line[j % 4] if j < len(beats) - 1 else line[3], 90))
        else:  # octaves
            for j, x in enumerate(_beats_in(a, b, beat / 2)):
                rows.append(
                    (x, min(beat / 2, b - x) * 0.8, root + (12 if j % 2 else 0), 92 if j % 2 == 0 else 78)
                )
    return _events_from_rows(rows)


def chord_voice(work: Work, pattern: str) -> np.ndarray:
    """An added chord voice (triads in close position from CHORD_LOW) in a pattern, BEAT_DTYPE."""
    bounds, roots, minors = estimate_chords(work)
    beat = work.beat_beats or 1.0
    kind = _meter_kind(work)
    rows: list[tuple[float, float, int, int]] = []
    for g in range(len(roots)):
        a, b = bounds[g], bounds[g + 1]
        pcs = [int(roots[g]), (int(roots[g]) + (3 if minors[g] else 4)) % 12, (int(roots[g]) + 7) % 12]
        tones = sorted(CHORD_LOW + (pc - CHORD_LOW) % 12 for pc in pcs)
        beats = _beats_in(a, b, beat)
        if pattern == "pad" or len(beats) == 0:
            rows += [(a, b - a, p, 70) for p in tones]
        elif pattern == "block":
            for j, x in enumerate(beats):
                rows += [(x, min(beat, b - x) * 0.85, p, 76 if j == 0 else 64) for p in tones]
        elif pattern == "offbeat":  # oom-pah: the off-beats (or beats 2, 3 in triple time)
            steps = beats[1:] if kind == "triple" else _beats_in(a + beat / 2, b, beat)
            for x in steps:
                rows += [(x, min(beat / 2, b - x) * 0.8, p, 68) for p in tones]
        elif pattern == "arpeggio":
            cycle = [*tones, tones[0] + 12, tones[2], tones[1]]
            for j, x in enumerate(_beats_in(a, b, beat / 2)):
                rows.append((x, min(beat, b - x), cycle[j % len(cycle)], 70 if j % 2 == 0 else 60))
        else:  # strum: triad + octave, strings a few hundredths of a beat apart, on each beat
            strum = [*tones, tones[0] + 12]
            for j, x in enumerate(beats):
                up = j % 2 == 1
                for s, p in enumerate(reversed(strum) if up else strum):
                    t0 = x + 0.03 * s
                    if t0 < b:
                        rows.append((t0, min(beat, b - x) * 0.95 - 0.03 * s, p, 72 if not up else 60))
    return _events_from_rows(rows)


def drum_voice(work: Work, pattern: str) -> np.ndarray:
    """An added drum groove for the work's meter, BEAT_DTYPE with General-MIDI percussion keys."""
    bar = _bar_beats(work)
    beat = work.beat_beats or 1.0
    kind = _meter_kind(work)
    end = work.duration_beats
    phase = float(work.sections_beats[1] % bar) if work.n_sections > 1 else 0.0
    k = DRUM_KEYS
    rows: list[tuple[float, float, int, int]] = []
    beats_per_bar = max(1, round(bar / beat))
    starts = np.arange(phase - bar if phase > 0 else 0.0, end, bar)
    for bar_index, b0 in enumerate(starts):
        for j in range(beats_per_bar):
            x = b0 + j * beat
            if pattern == "light":
                hits = [(k["shaker"], 70), (k["shaker"], 50, beat / 2)] + (
                    [(k["kick"], 85)] if j == 0 else []
                )
            elif pattern == "folk":
                hits = [(k["kick"], 90)] if j == 0 else [(k["side_stick"], 70)]
                hits.append(
                    (k["tambourine"], 55, beat / 2) if kind != "compound" else (k["tambourine"], 55, beat / 3)
                )
            else:  # backbeat
                if kind == "triple":
                    hits = [(k["kick"], 100)] if j == 0 else [(k["snare"], 80)]
                elif kind == "compound":
                    hits = [(k["kick"], 100)] if j % 2 == 0 else [(k["snare"], 92)]
                else:
                    hits = [(k["kick"], 100)] if j % 2 == 0 else [(k["snare"], 95)]
                sub = beat / 3 if kind == "compound" else beat / 2
                for s in range(round(beat / sub)):
                    hits.append((k["closed_hat"], 72 if s == 0 else 56, s * sub))
            for hit in hits:
                key, vel = int(hit[0]), int(hit[1])
                offset = float(hit[2]) if len(hit) > 2 else 0.0
                if 0 <= x + offset < end:
                    rows.append((x + offset, 0.1, key, vel))
        if bar_index % 8 == 0 and b0 >= 0:
            rows.append((b0, 0.1, k["crash"], 80))
    return _events_from_rows(rows)


# ---------------------------------------------------------------------------------------------
# Applying a version


def _source_events(work: Work, spec: VoiceSpec) -> np.ndarray:
    if spec.source.startswith("part:"):
        index = int(spec.source.split(":", 1)[1])
        if not 0 <= index < len(work.parts):
            raise ValueError(f"{work.work_id} has {len(work.parts)} parts, voice asks for part {index}")
        src = work.parts[index].events
        ev = np.zeros(len(src), dtype=BEAT_DTYPE)
        for name in BEAT_DTYPE.names or ():
            ev[name] = src[name]
        return ev
    if spec.source == "bass":
        return bass_line(work, spec.pattern)
    if spec.source == "chords":
        return chord_voice(work, spec.pattern)
    if spec.source == "drums":
        return drum_voice(work, spec.pattern)
    raise ValueError(f"unknown voice source {spec.source!r}")


def vary_melody(events: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """A performer's liberties with a melody (BEAT_DTYPE in, BEAT_DTYPE out): each lone note (no
    other note at its onset) is, with probability amount/2, dropped and its time given to the
    note before, or, with probability amount/2 when it lasts a beat or more, split into itself and
    a neighbour tone leading to the next note."""
    n = len(events)
    if amount <= 0 or n < 3:
        return events
    onsets = events["onset_beats"]
    _, first_index, counts = np.unique(onsets, return_index=True, return_counts=True)
    lone = np.zeros(n, dtype=bool)
    lone[first_index[counts == 1]] = True
    draws = rng.random(n)
    steps = rng.choice([1, 2], n)
    rows: list[list[float]] = []
    last_lone_row = -1
    for i in range(n):
        onset, duration, pitch, velocity = (float(x) for x in events[i])
        if lone[i] and 0 < i < n - 1 and draws[i] < amount / 2 and last_lone_row >= 0:
            prev = rows[last_lone_row]
            if abs(prev[0] + prev[1] - onset) < 1e-6:  # legato: the previous note holds on
                prev[1] += duration
                continue
        if lone[i] and i < n - 1 and amount / 2 <= draws[i] < amount and duration >= 1.0:
            target = float(events["pitch"][i + 1])
            direction = np.sign(target - pitch) or (1.0 if draws[i] < 0.75 * amount else -1.0)
            rows.append([onset, duration / 2, pitch, velocity])
            rows.append([onset + duration / 2, duration / 2, pitch + direction * steps[i], velocity * 0.9])
            last_lone_row = len(rows) - 1
            continue
        rows.append([onset, duration, pitch, velocity])
        last_lone_row = len(rows) - 1 if lone[i] else -1
    out = np.zeros(len(rows), dtype=BEAT_DTYPE)
    arr = np.array(rows, dtype=np.float64)
    out["onset_beats"], out["duration_beats"] = arr[:, 0], arr[:, 1]
    out["pitch"], out["velocity"] = np.clip(arr[:, 2], 0, 127), np.clip(np.round(arr[:, 3]), 1, 127)
    return out


def _swing_beats(beats: np.ndarray, swing: float) -> np.ndarray:
    """Delay off-beat eighths: position u in each quarter maps 0→0, ½→½+swing/2, 1→1."""
    if swing <= 0:
        return beats
    whole = np.floor(beats)
    u = beats - whole
    mid = 0.5 + swing / 2
    return whole + np.where(u <= 0.5, u * (mid / 0.5), mid + (u - 0.5) * ((1 - mid) / 0.5))


def _tempo_warp(total_s: float, drift: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth monotone time warp (grid, warped grid): local tempo 1 + drift·g(t), |g| ≤ 1."""
    step = 0.05
    grid = np.arange(0.0, total_s + 2 * step, step)
    if drift <= 0:
        return grid, grid
    periods = rng.uniform(6.0, 30.0, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.uniform(0.3, 1.0, 3)
    g = sum(w * np.sin(2 * np.pi * grid / p + ph) for w, p, ph in zip(weights, periods, phases))
    g = g / weights.sum()
    rate = 1.0 + drift * g
    warped = np.concatenate([[0.0], np.cumsum(step / rate[:-1])])
    return grid, warped


def apply_version(work: Work, params: VersionParams, max_duration_s: float | None = None) -> Arrangement:
    """The version's note events in seconds (key, tempo, structure, instrumentation, accompaniment).

    max_duration_s: drop notes that start after this many seconds of the version (rendering cost
    of long works); the audio is cut by the renderer.
    """
    if params.work_id != work.work_id:
        raise ValueError(f"params are for {params.work_id!r}, not {work.work_id!r}")
    if any(not 0 <= k < work.n_sections for k in params.structure):
        raise ValueError(f"structure {params.structure} refers to sections outside 0..{work.n_sections - 1}")
    if params.tempo_factor <= 0:
        raise ValueError(f"tempo_factor must be > 0, got {params.tempo_factor}")
    rng = np.random.default_rng(params.seed)
    sections = work.sections_beats
    beat = work.beat_beats or 1.0
    swing = params.swing if beat == 1.0 else 0.0

    def seconds(beats: np.ndarray) -> np.ndarray:
        return beats_to_seconds(_swing_beats(beats, swing), work.tempo_map)

    # where each structure element starts on the version's (unwarped) timeline
    sec_bounds = seconds(sections)
    lengths = np.array([sec_bounds[k + 1] - sec_bounds[k] for k in params.structure])
    cursor = np.concatenate([[0.0], np.cumsum(lengths)])
    total_s = float(cursor[-1]) / params.tempo_factor
    grid, warped = _tempo_warp(total_s + 1.0, params.tempo_drift, rng)

    voices = []
    for spec in params.voices:
        ev = _source_events(work, spec)
        if spec.source == "part:0" and params.melody_variation > 0:
            ev = vary_melody(ev, params.melody_variation, rng)
        if params.accent and not spec.is_drums and len(ev):
            pos = ev["onset_beats"] / beat
            on_beat = np.abs(pos - np.round(pos)) < 1e-6
            ev["velocity"] = np.clip(ev["velocity"].astype(np.int64) + params.accent * on_beat, 1, 127)
        onsets, ends, pitches, velocities = [], [], [], []
        for j, k in enumerate(params.structure):
            a, b = sections[k], sections[k + 1]
            m = (ev["onset_beats"] >= a) & (ev["onset_beats"] < b)
            if not m.any():
                continue
            seg = ev[m]
            end_beats = seg["onset_beats"] + seg["duration_beats"]
            natural_next = j + 1 < len(params.structure) and params.structure[j + 1] == k + 1
            if not natural_next:
                end_beats = np.minimum(end_beats, b)
            shift = cursor[j] - sec_bounds[k]
            onsets.append(seconds(seg["onset_beats"]) + shift)
            ends.append(seconds(end_beats) + shift)
            pitches.append(seg["pitch"])
            velocities.append(seg["velocity"])
        if not onsets:
            voices.append(VoiceEvents(spec, np.zeros(0, dtype=EVENT_DTYPE)))
            continue
        on = np.interp(np.concatenate(onsets) / params.tempo_factor, grid, warped)
        off = np.interp(np.concatenate(ends) / params.tempo_factor, grid, warped)
        pitch = np.concatenate(pitches).astype(np.int64)
        velocity = np.concatenate(velocities).astype(np.float64)
        n = len(on)
        if params.humanize_s > 0:
            jitter = np.clip(
                rng.normal(0, params.humanize_s, n), -2.5 * params.humanize_s, 2.5 * params.humanize_s
            )
            on, off = on + jitter, off + jitter
        if params.velocity_jitter > 0:
            velocity = velocity * np.exp(rng.normal(0, params.velocity_jitter, n))
        if not spec.is_drums:
            pitch = pitch + params.transpose + 12 * spec.octave
            low, high = MELODIC_RANGE
            pitch = np.where(pitch < low, pitch + 12 * np.ceil((low - pitch) / 12), pitch)
            pitch = np.where(pitch > high, pitch - 12 * np.ceil((pitch - high) / 12), pitch)
        on = on - params.start_offset_s
        off = off - params.start_offset_s
        keep = off > 0
        if max_duration_s is not None:
            keep &= on < max_duration_s
        out = np.zeros(int(keep.sum()), dtype=EVENT_DTYPE)
        start = np.maximum(on[keep], 0.0)
        out["onset_s"] = start
        out["duration_s"] = np.maximum(off[keep] - start, 0.01)
        out["pitch"] = pitch[keep]
        out["velocity"] = np.clip(np.round(velocity[keep]), 1, 127)
        voices.append(VoiceEvents(spec, out[np.argsort(out["onset_s"], kind="stable")]))
    return Arrangement(tuple(voices))
