"""Versions (key, tempo, structure, determinism), the fast synthesiser, effects and FluidSynth."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from scipy import signal

from csi_training.render import effects, notes, synth, versions

SR = 16000


def _work(pitches, durations=None, qpm=120.0, sections=None, meter=(4, 4), parts=1, work_id="w"):
    durations = durations or [1.0] * len(pitches)
    ev = np.zeros(len(pitches), dtype=notes.NOTE_DTYPE)
    ev["onset_beats"] = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    ev["duration_beats"] = durations
    ev["pitch"] = pitches
    ev["velocity"] = 100
    return notes.make_work(
        work_id,
        [(f"p{i}", -1, ev) for i in range(parts)],
        tempo_bpm=qpm,
        meter=meter,
        sections_beats=sections,
    )


def _plain(work, **changes):
    """A version with nothing but the given changes: one sine voice, dry, no randomness."""
    base = versions.VersionParams(
        work_id=work.work_id, version_index=0, seed=0, original=False, transpose=0, tempo_factor=1.0,
        tempo_drift=0.0, swing=0.0, humanize_s=0.0, melody_variation=0.0, velocity_jitter=0.0, accent=0,
        structure=tuple(range(work.n_sections)),
        voices=(versions.VoiceSpec("part:0", "", 0, "sine", 0.0),), soundfont="FluidR3_GM",
        reverb_rt60_s=0.0, reverb_wet=0.0, eq_tilt_db=0.0, noise="none", noise_snr_db=0.0, codec="none",
        codec_kbps=0, lowpass_hz=0.0, loudness_dbfs=-20.0, start_offset_s=0.0,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _peak_hz(x: np.ndarray, sr: int = SR) -> float:
    """Frequency of the spectral peak, refined by parabolic interpolation on the log magnitude."""
    n = 1 << 18
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n)) + 1e-12
    k = int(np.argmax(mag))
    a, b, c = np.log(mag[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n


# ---------------------------------------------------------------------------------------------
# Versions: the symbolic part


def test_transposition_shifts_the_synthesised_pitch(rng: np.random.Generator) -> None:
    work = _work([69, 69], [16.0, 4.0])  # A4 held for 8 s, then 2 s more
    for k in [int(rng.integers(-6, 7)), -6, 6]:
        arrangement = versions.apply_version(work, _plain(work, transpose=k))
        assert np.all(arrangement.voices[0].events["pitch"] == 69 + k)
        y = synth.synthesize(arrangement, SR)
        expected = 440.0 * 2 ** (k / 12)
        assert _peak_hz(y[SR : 3 * SR]) == pytest.approx(expected, rel=5e-4)


def test_tempo_factor_scales_durations(rng: np.random.Generator) -> None:
    pitches = rng.integers(55, 80, 24).tolist()
    durations = rng.choice([0.5, 1.0, 1.5, 2.0], 24).tolist()
    work = _work(pitches, durations, qpm=float(rng.uniform(60, 160)))
    factor = float(rng.uniform(0.75, 1.3))
    base = versions.apply_version(work, _plain(work)).voices[0].events
    fast = versions.apply_version(work, _plain(work, tempo_factor=factor)).voices[0].events
    np.testing.assert_allclose(fast["onset_s"], base["onset_s"] / factor, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fast["duration_s"], base["duration_s"] / factor, rtol=1e-9, atol=1e-9)
    assert base["onset_s"][-1] + base["duration_s"][-1] == pytest.approx(work.duration_s)
    # the audio lasts accordingly: sound up to the last note-off, silence after the sine's release
    y = synth.synthesize(versions.apply_version(work, _plain(work, tempo_factor=factor)), SR)
    end = int(work.duration_s / factor * SR)
    assert np.sqrt(np.mean(y[end - SR // 5 : end - SR // 50] ** 2)) > 0.1
    release = synth.tail_s("sine")
    assert not np.any(y[end + int((release + 0.02) * SR) :])


def test_structure_plays_sections_in_the_given_order(rng: np.random.Generator) -> None:
    # four sections of 4 beats, each a distinct pitch
    pitches = [60] * 4 + [64] * 4 + [67] * 4 + [72] * 4
    work = _work(pitches, sections=[0, 4, 8, 12, 16])
    order = (*(int(i) for i in rng.permutation(4)[: int(rng.integers(2, 5))]), 0, 0)
    ev = versions.apply_version(work, _plain(work, structure=order)).voices[0].events
    expected = [pitches[4 * k] for k in order for _ in range(4)]
    assert ev["pitch"].tolist() == expected
    np.testing.assert_allclose(ev["onset_s"], np.arange(len(expected)) * 0.5)


def test_notes_crossing_a_dropped_section_are_cut() -> None:
    work = _work([60, 62, 64], [3.0, 3.0, 2.0], sections=[0, 4, 8])  # the 62 spans beats 3-6
    ev = versions.apply_version(work, _plain(work, structure=(0, 0))).voices[0].events
    # section 0 twice: 60 (3 beats), 62 cut at the section end (1 beat), then again
    assert ev["pitch"].tolist() == [60, 62, 60, 62]
    np.testing.assert_allclose(ev["duration_s"], [1.5, 0.5, 1.5, 0.5])
    natural = versions.apply_version(work, _plain(work)).voices[0].events
    np.testing.assert_allclose(natural["duration_s"], [1.5, 1.5, 1.0])  # not cut when section 1 follows


def test_versions_are_deterministic_and_varied(rng: np.random.Generator) -> None:
    work = _work(rng.integers(55, 80, 64).tolist(), rng.choice([0.5, 1.0], 64).tolist(), parts=3)
    seed = int(rng.integers(2**31))
    a = versions.make_versions(work, 6, seed=seed)
    b = versions.make_versions(work, 6, seed=seed)
    assert [v.to_dict() for v in a] == [v.to_dict() for v in b]
    assert a[0].original and a[0].transpose == 0 and a[0].tempo_factor == 1.0
    assert a[0].structure[: work.n_sections] == tuple(range(work.n_sections))
    assert not any(v.original for v in a[1:])
    c = versions.make_versions(work, 6, seed=seed + 1)
    assert [v.to_dict() for v in a[1:]] != [v.to_dict() for v in c[1:]]
    # params survive a JSON round trip and give the same events
    for v in a:
        again = versions.VersionParams.from_dict(v.to_dict())
        assert again == v
        e1 = versions.apply_version(work, v)
        e2 = versions.apply_version(work, again)
        for x, y in zip(e1.voices, e2.voices):
            np.testing.assert_array_equal(x.events, y.events)
    # ranges of the config hold over many draws
    config = versions.VersionConfig()
    many = [versions.sample_version(work, np.random.default_rng(i), config) for i in range(60)]
    assert all(-6 <= v.transpose <= 6 for v in many)
    assert all(0.75 <= v.tempo_factor <= 1.3 for v in many)
    assert len({v.transpose for v in many}) > 5 and len({v.voices[0].program for v in many}) > 5
    assert any(v.structure[: work.n_sections] != tuple(range(work.n_sections)) for v in many)
    assert any(any(s.source == "bass" for s in v.voices) for v in many)
    assert all(v.voices[0].source == "part:0" for v in many)


def test_min_duration_repeats_the_form() -> None:
    work = _work([60, 62, 64, 65] * 4, sections=[0, 8, 16])  # 8 s at 120 bpm
    v = versions.sample_version(
        work, np.random.default_rng(0), versions.VersionConfig(min_duration_s=20.0), original=True
    )
    assert v.structure == (0, 1, 0, 1, 0, 1)  # 24 s ≥ 20 s


def test_accompaniment_follows_the_harmony() -> None:
    # I - IV - V - I in C major as arpeggios, one bar each, twice
    bar_c, bar_f, bar_g = [60, 64, 67, 72], [65, 69, 72, 77], [67, 71, 74, 79]
    work = _work((bar_c + bar_f + bar_g + bar_c) * 2, qpm=100.0)
    bounds, roots, minors = versions.estimate_chords(work)
    np.testing.assert_array_equal(bounds, np.arange(0, 33, 4))
    assert roots.tolist() == [0, 5, 7, 0] * 2 and not minors.any()
    assert versions.estimate_key(work) == (0, False)
    for pattern in versions.BASS_PATTERNS:
        bass = versions.bass_line(work, pattern)
        first_bar = bass[bass["onset_beats"] < 4]
        assert first_bar["pitch"][0] % 12 == 0 and first_bar["pitch"].max() < 60
    for pattern in versions.CHORD_PATTERNS:
        chords = versions.chord_voice(work, pattern)
        third_bar = chords[(chords["onset_beats"] >= 8) & (chords["onset_beats"] < 12)]
        assert set((third_bar["pitch"] % 12).tolist()) <= {7, 11, 2}
    for pattern in versions.DRUM_PATTERNS:
        drums = versions.drum_voice(work, pattern)
        assert len(drums) >= 16 and set(drums["pitch"].tolist()) <= set(synth.DRUM_KEYS.values())


def test_apply_version_rejects_mismatches() -> None:
    work = _work([60] * 16)
    with pytest.raises(ValueError, match="params are for"):
        versions.apply_version(work, _plain(work, work_id="other"))
    with pytest.raises(ValueError, match="sections outside"):
        versions.apply_version(work, _plain(work, structure=(0, 99)))
    with pytest.raises(ValueError, match="asks for part"):
        versions.apply_version(work, _plain(work, voices=(versions.VoiceSpec("part:3", "", 0, "sine", 0.0),)))


# ---------------------------------------------------------------------------------------------
# The synthesiser


@pytest.mark.parametrize("preset", sorted(synth.PRESETS))
def test_every_preset_sounds_at_its_pitch_without_aliasing(preset: str, rng: np.random.Generator) -> None:
    p = synth.PRESETS[preset]
    pitch = int(rng.integers(48, 80))
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    ev = np.zeros(1, dtype=synth.EVENT_DTYPE)
    ev[0] = (0.05, 1.5, pitch, 100)
    y = synth.render_notes(ev, preset, SR, 2 * SR)
    assert y.dtype == np.float32 and np.all(np.isfinite(y)) and np.max(np.abs(y)) > 0.05
    seg = y[int(0.3 * SR) : int(1.3 * SR)].astype(np.float64)
    freqs, psd = signal.welch(seg, SR, nperseg=8192)
    # energy sits on the partials: harmonics for wavetable presets, the modes for mallets
    ratios = (
        np.arange(1, int(0.5 * SR / f0) + 1)
        if p.harmonic_level > 0
        else np.array([r for r, _, _ in p.partials])
    )
    on_partial = np.zeros_like(freqs, dtype=bool)
    spread = 2 ** ((p.vibrato_cents + p.detune_cents) / 1200) - 1  # vibrato/chorus widen the partials
    for r in ratios:
        on_partial |= np.abs(freqs - r * f0) <= 0.025 * f0 + 1.5 * spread * r * f0 + 2 * SR / 8192
    share = psd[on_partial].sum() / psd.sum()
    noisy = p.noise_level * np.exp(-0.25 / p.noise_s) > 1e-3
    assert share > (0.9 if not noisy else 0.7), f"{preset}: only {share:.2f} of the energy on partials"


def test_high_notes_do_not_alias() -> None:
    ev = np.zeros(1, dtype=synth.EVENT_DTYPE)
    ev[0] = (0.0, 1.0, 100, 100)  # 2637 Hz: harmonics 4, 5, ... would fold back below 8 kHz
    f0 = 440.0 * 2 ** (31 / 12)
    for preset in ("saw_lead", "harpsichord", "brass"):
        y = synth.render_notes(ev, preset, SR, SR).astype(np.float64)
        freqs, psd = signal.welch(y[1000:12000], SR, nperseg=4096)
        near = (np.abs(freqs - f0) < 40) | (np.abs(freqs - 2 * f0) < 60)  # the harmonics below Nyquist
        assert psd[~near].sum() < 1e-3 * psd[near].sum(), preset


def test_wavetable_matches_its_harmonic_spectrum(rng: np.random.Generator) -> None:
    """The rendered steady state has the preset's designed harmonic amplitudes (independent FFT check)."""
    preset = synth.PRESETS["clarinet"]
    pitch = int(rng.integers(50, 70))
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    ev = np.zeros(1, dtype=synth.EVENT_DTYPE)
    ev[0] = (0.0, 3.0, pitch, 127)
    no_mod = dataclasses.replace(preset, vibrato_cents=0.0, noise_level=0.0, name="clarinet-test")
    y = synth.render_notes(ev, no_mod, SR, 3 * SR)[SR : 2 * SR].astype(np.float64)
    band = (pitch - synth.LOWEST_PITCH) // synth.BAND_SEMITONES
    low = synth.LOWEST_PITCH + band * synth.BAND_SEMITONES
    f0_design = 440.0 * 2 ** ((low + 1 - 69) / 12)
    f0_max = 440.0 * 2 ** ((low + synth.BAND_SEMITONES - 1 - 69 + 0.5) / 12)
    design = synth._band_spectrum(no_mod, f0_design, f0_max, SR, 0.0)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    bins = [round(h * f0 * len(y) / SR) for h in range(1, 9)]
    measured = np.array([spectrum[b - 3 : b + 4].max() for b in bins])
    expected = design[1:9]
    loud = expected > expected.max() * 0.05
    np.testing.assert_allclose(
        20 * np.log10(measured[loud] / measured[0]), 20 * np.log10(expected[loud] / expected[0]), atol=1.5
    )


def test_velocity_envelope_and_edges() -> None:
    ev = np.zeros(2, dtype=synth.EVENT_DTYPE)
    ev[0] = (0.0, 0.5, 69, 127)
    ev[1] = (1.0, 0.5, 69, 64)
    y = synth.render_notes(ev, "organ", SR, 2 * SR)
    loud = np.sqrt(np.mean(y[int(0.1 * SR) : int(0.4 * SR)] ** 2))
    soft = np.sqrt(np.mean(y[int(1.1 * SR) : int(1.4 * SR)] ** 2))
    assert soft / loud == pytest.approx((64 / 127) ** 2, rel=0.02)
    # released: -50 dB after 5.76 release time constants, then nothing until the next note
    assert not np.any(y[int((0.5 + synth.tail_s("organ") + 0.01) * SR) : SR - 1])
    assert not synth.render_notes(ev[:0], "organ", SR, SR).any()
    late = ev.copy()
    late["onset_s"] = [5.0, -1.0]
    assert not synth.render_notes(late, "organ", SR, SR).any()  # outside the output: dropped
    with pytest.raises(ValueError, match="brightness"):
        synth.render_notes(ev, "organ", SR, SR, brightness=7)
    with pytest.raises(ValueError, match=r"0\.\.127"):
        synth.preset_for_program(128)
    assert {synth.preset_for_program(p) for p in range(128)} <= set(synth.PRESETS)


def test_drums_render_their_samples() -> None:
    ev = np.zeros(3, dtype=synth.EVENT_DTYPE)
    ev[:] = [(0.0, 0.1, 36, 127), (0.5, 0.1, 38, 127), (1.0, 0.1, 127, 127)]  # 127: no sample → hat
    y = synth.render_drums(ev, SR, 2 * SR)
    for t in (0.0, 0.5, 1.0):
        assert np.max(np.abs(y[int(t * SR) : int(t * SR) + 400])) > 0.3
    kick_spec = np.abs(np.fft.rfft(y[: int(0.3 * SR)]))
    assert np.argmax(kick_spec) * SR / int(0.3 * SR) < 200  # the kick is low


# ---------------------------------------------------------------------------------------------
# Effects


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
def test_noise_at_the_requested_snr(kind: str, rng: np.random.Generator) -> None:
    x = (rng.standard_normal(3 * SR) * rng.uniform(0.01, 0.5)).astype(np.float32)
    snr = float(rng.uniform(-5, 40))
    y = effects.add_noise(x, snr, kind, SR, rng)
    noise = y.astype(np.float64) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr, abs=0.01)


def test_noise_colours_have_their_slopes(rng: np.random.Generator) -> None:
    slopes = {}
    for kind in ("white", "pink", "brown"):
        n = effects.make_noise(kind, 20 * SR, SR, rng).astype(np.float64)
        freqs, psd = signal.welch(n, SR, nperseg=4096)
        band = (freqs > 100) & (freqs < 4000)
        slopes[kind] = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd[band]), 1)[0]  # dB per octave
    assert slopes["white"] == pytest.approx(0.0, abs=0.3)
    assert slopes["pink"] == pytest.approx(-3.0, abs=0.5)
    assert slopes["brown"] == pytest.approx(-6.0, abs=0.8)
    babble = effects.make_noise("babble", 20 * SR, SR, rng)
    env = np.sqrt(np.mean(babble[: 20 * SR].reshape(-1, SR // 50).astype(np.float64) ** 2, axis=1))
    assert np.std(env) / np.mean(env) > 0.2  # fluctuates like speech, unlike stationary noise
    with pytest.raises(ValueError, match="unknown noise"):
        effects.make_noise("purple", 10, SR, rng)


def test_reverb_ir_decays_at_its_rt60(rng: np.random.Generator) -> None:
    rt60 = float(rng.uniform(0.3, 2.5))
    ir = effects.reverb_ir(SR, rt60, rng).astype(np.float64)
    assert np.sum(ir**2) == pytest.approx(1.0, rel=1e-5)
    low = signal.sosfilt(signal.butter(4, 1000, "low", fs=SR, output="sos"), ir)
    # Schroeder backward integration: the energy decay curve's slope between -5 and -35 dB
    edc = 10 * np.log10(np.cumsum(low[::-1] ** 2)[::-1] / np.sum(low**2) + 1e-30)
    t = np.arange(len(ir)) / SR
    fit = (edc < -5) & (edc > -35)
    slope = np.polyfit(t[fit], edc[fit], 1)[0]  # dB per second
    assert -60.0 / slope == pytest.approx(rt60, rel=0.1)
    high = signal.sosfilt(signal.butter(4, 4000, "high", fs=SR, output="sos"), ir)
    edc_h = 10 * np.log10(np.cumsum(high[::-1] ** 2)[::-1] / np.sum(high**2) + 1e-30)
    fit_h = (edc_h < -5) & (edc_h > -35)
    assert -60.0 / np.polyfit(t[fit_h], edc_h[fit_h], 1)[0] < 0.7 * rt60  # highs die sooner


def test_linear_chain_tilt_and_lowpass(rng: np.random.Generator) -> None:
    t = np.arange(2 * SR) / SR
    tilt = float(rng.uniform(-2, 2))
    for f in (250.0, 4000.0):
        x = (0.1 * np.sin(2 * np.pi * f * t)).astype(np.float32)
        y = effects.linear_chain(x, SR, 0.0, 0.0, tilt, 0.0, rng)
        gain_db = effects.rms_db(y[4000:-4000]) - effects.rms_db(x[4000:-4000])
        assert gain_db == pytest.approx(tilt * np.log2(f / 1000.0), abs=0.3)
        # linear phase, delay compensated: the output lines up with the input
        assert np.argmax(signal.correlate(y[4000:-4000], x[4000:-4000], "full")) - (len(x) - 8001) == 0
    x = (0.1 * np.sin(2 * np.pi * 6000.0 * t)).astype(np.float32)
    y = effects.linear_chain(x, SR, 0.0, 0.0, 0.0, 3000.0, rng)
    assert effects.rms_db(y[4000:-4000]) - effects.rms_db(x) < -40
    dry = effects.linear_chain(x, SR, 0.0, 0.0, 0.0, 0.0, rng)
    np.testing.assert_array_equal(dry, x)


def test_codec_approx_band_limits_and_stays_close(rng: np.random.Generator) -> None:
    x = effects.make_noise("pink", 2 * SR, SR, rng) * 0.1
    for kbps, cutoff in ((24, 5000.0), (64, 7500.0)):
        y = effects.codec_approx(x, SR, kbps).astype(np.float64)
        assert len(y) == len(x)
        freqs, psd = signal.welch(y, SR, nperseg=1024)
        assert psd[freqs > cutoff + 300].sum() < 1e-4 * psd.sum()
        err = 10 * np.log10(np.mean((y - x) ** 2) / np.mean(x.astype(np.float64) ** 2))
        assert err < -3
    # with nothing dropped or quantised coarsely, the STFT round trip is near perfect
    sine = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    y = effects.codec_approx(sine, SR, 128)
    assert 10 * np.log10(np.mean((y - sine) ** 2) / np.mean(sine**2)) < -25


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_mp3_roundtrip_is_aligned(rng: np.random.Generator) -> None:
    t = np.arange(3 * SR) / SR
    x = (0.2 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 1.3 * t))).astype(np.float32)
    y = effects.mp3_roundtrip(x, SR, int(rng.choice([32, 64, 128])))
    assert len(y) == len(x) and y.dtype == np.float32
    corr = signal.correlate(y[SR:-SR], x[SR:-SR], "full")
    assert int(np.argmax(corr)) - (len(x) - 2 * SR - 1) == 0
    assert 10 * np.log10(np.mean((y[SR:-SR] - x[SR:-SR]) ** 2) / np.mean(x**2)) < -15


def test_missing_ffmpeg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(effects.FFmpegError, match="apt install ffmpeg"):
        effects.mp3_roundtrip(np.ones(100, np.float32), SR, 64)


def test_produce_levels_and_bad_input(rng: np.random.Generator) -> None:
    work = _work([60, 64, 67, 72] * 8)
    params = _plain(work, reverb_rt60_s=0.8, reverb_wet=0.3, noise="pink", noise_snr_db=20.0,
                    codec="lowpass", lowpass_hz=4000.0, loudness_dbfs=-23.0)  # fmt: skip
    x = synth.synthesize(versions.apply_version(work, params), SR)
    y = effects.produce(x, SR, params, rng, offline=False)
    assert y.dtype == np.float32 and len(y) == len(x) and np.max(np.abs(y)) <= effects.PEAK_CEILING
    assert effects.rms_db(y) == pytest.approx(-23.0 + 10 * np.log10(1 + 10**-2), abs=0.1)
    with pytest.raises(ValueError, match="silent"):
        effects.produce(np.zeros(100, np.float32), SR, params, rng)
    with pytest.raises(ValueError, match="NaN"):
        effects.produce(np.full(100, np.nan, np.float32), SR, params, rng)
    with pytest.raises(ValueError, match="mono"):
        effects.linear_chain(np.zeros((2, 10), np.float32), SR, 0, 0, 1, 0, rng)


# ---------------------------------------------------------------------------------------------
# FluidSynth

HAVE_FLUIDSYNTH = shutil.which("fluidsynth") is not None


def test_midi_writer_round_trips_through_music21() -> None:
    from music21 import midi as m21midi

    from csi_training.render import fluidsynth

    work = _work([60, 62, 64, 65, 67, 60, 60], [1, 1, 1, 1, 2, 0.5, 0.5], qpm=90.0, parts=2)
    params = _plain(work, voices=(
        versions.VoiceSpec("part:0", "", 40, "strings", -3.0, pan=0.5),
        versions.VoiceSpec("part:1", "", 0, "piano", -6.0),
        versions.VoiceSpec("drums", "backbeat", 0, "drums", -10.0),
    ))  # fmt: skip
    arrangement = versions.apply_version(work, params)
    mf = m21midi.MidiFile()
    mf.readstr(fluidsynth.midi_bytes(arrangement))
    assert mf.format == 1 and len(mf.tracks) == 4
    programs, notes_on = {}, {}
    for track in mf.tracks[1:]:
        for e in track.events:
            if e.type == m21midi.ChannelVoiceMessages.PROGRAM_CHANGE:
                programs[e.channel] = e.data
            if e.type == m21midi.ChannelVoiceMessages.NOTE_ON and e.velocity > 0:
                notes_on.setdefault(e.channel, []).append(e.pitch)
    assert programs == {1: 40, 2: 0}  # channels are 1-based in music21; drums (10) get no program
    assert notes_on[1] == notes_on[2] == [60, 62, 64, 65, 67, 60, 60]
    assert 10 in notes_on and set(notes_on[10]) <= set(synth.DRUM_KEYS.values())


@pytest.mark.skipif(not HAVE_FLUIDSYNTH, reason="fluidsynth is not installed (apt install fluidsynth)")
def test_fluidsynth_renders_audio_at_the_requested_rate(rng: np.random.Generator) -> None:
    from csi_training.render import fluidsynth

    names = fluidsynth.available_soundfonts()
    if not names:
        pytest.skip("no General-MIDI soundfont installed (apt install fluid-soundfont-gm timgm6mb-soundfont)")
    work = _work([69] * 4, [2.0] * 4)
    params = _plain(work, voices=(versions.VoiceSpec("part:0", "", 73, "flute", 0.0),))  # flute
    arrangement = versions.apply_version(work, params)
    rate = int(rng.choice([16000, 22050]))
    y = fluidsynth.render_fluidsynth(arrangement, rate, names[-1])
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) >= (4.0 + fluidsynth.TAIL_S) * rate
    assert effects.rms_db(y[: 4 * rate]) > -40
    assert _peak_hz(y[rate // 2 : 3 * rate], rate) == pytest.approx(440.0, rel=0.01)
    fixed = fluidsynth.render_fluidsynth(arrangement, rate, names[-1], duration_s=1.5)
    assert len(fixed) == int(1.5 * rate)


def test_missing_fluidsynth_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from csi_training.render import fluidsynth

    monkeypatch.setenv("PATH", str(tmp_path))
    work = _work([60] * 8)
    with pytest.raises(fluidsynth.FluidSynthError, match="apt install fluidsynth"):
        fluidsynth.render_fluidsynth(versions.apply_version(work, _plain(work)), SR)


def test_missing_soundfont_names_the_package(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from csi_training.render import fluidsynth

    with pytest.raises(fluidsynth.FluidSynthError, match="fluid-soundfont-gm"):
        fluidsynth.find_soundfont("FluidR3_GM", search_dirs=[str(tmp_path)])
    with pytest.raises(fluidsynth.FluidSynthError, match="does not exist"):
        fluidsynth.find_soundfont(str(tmp_path / "x.sf2"))
    (tmp_path / "Mine.sf2").write_bytes(b"")
    assert fluidsynth.find_soundfont("Mine", search_dirs=[str(tmp_path)]) == tmp_path / "Mine.sf2"
    monkeypatch.setenv("CSI_SOUNDFONT_DIR", str(tmp_path))
    assert fluidsynth.find_soundfont("Mine") == tmp_path / "Mine.sf2"


@pytest.mark.parametrize("preset", ["piano", "strings", "drums"])
def test_an_excerpt_renders_like_the_same_stretch_of_the_whole(preset: str, rng: np.random.Generator) -> None:
    n = 40
    ev = np.zeros(n, dtype=synth.EVENT_DTYPE)
    ev["onset_s"] = np.sort(rng.uniform(0, 8, n))
    ev["duration_s"] = rng.uniform(0.1, 1.5, n)
    ev["pitch"] = rng.integers(36, 84, n) if preset != "drums" else rng.choice([36, 38, 42, 49], n)
    ev["velocity"] = rng.integers(30, 127, n)
    render = (
        synth.render_drums if preset == "drums" else lambda e, sr, m: synth.render_notes(e, preset, sr, m)
    )
    whole = render(ev, SR, 10 * SR)
    offset = int(rng.integers(1 * SR, 5 * SR))  # a whole number of samples: onsets round alike
    shifted = ev.copy()
    shifted["onset_s"] -= offset / SR
    part = render(shifted, SR, 3 * SR)
    np.testing.assert_allclose(part, whole[offset : offset + 3 * SR], atol=1e-5)


def test_melody_variation_keeps_the_tune(rng: np.random.Generator) -> None:
    pitches = rng.integers(60, 72, 200)
    durations = rng.choice([0.5, 1.0, 2.0], 200)
    ev = np.zeros(200, dtype=versions.BEAT_DTYPE)
    ev["onset_beats"] = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    ev["duration_beats"], ev["pitch"], ev["velocity"] = durations, pitches, 80
    assert versions.vary_melody(ev, 0.0, rng) is ev
    out = versions.vary_melody(ev, 0.2, rng)
    # the total time is unchanged and notes still tile it without overlaps
    assert out["onset_beats"][0] == 0 and np.all(np.diff(out["onset_beats"]) > 0)
    np.testing.assert_allclose(out["onset_beats"][1:], (out["onset_beats"] + out["duration_beats"])[:-1])
    assert out["onset_beats"][-1] + out["duration_beats"][-1] == pytest.approx(durations.sum())
    # some notes were dropped, some ornamented; every original onset that survives keeps its pitch
    kept = np.isin(ev["onset_beats"], out["onset_beats"])
    assert 5 < (~kept).sum() < 45  # about amount/2 of 200 notes dropped
    where = np.searchsorted(out["onset_beats"], ev["onset_beats"][kept])
    np.testing.assert_array_equal(out["pitch"][where], ev["pitch"][kept])
    added = ~np.isin(out["onset_beats"], ev["onset_beats"])
    assert added.sum() > 0 and np.all(
        np.abs(np.diff(out["pitch"].astype(int))[np.flatnonzero(added) - 1]) <= 2
    )
