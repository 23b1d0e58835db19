"""Speech: FSDD read from WAV with the standard library, checked against MD5SUMS, log-mel features of our
own (mel formulas against HTK's and Slaney's), splits without overlap, and a tiny IMP run on it."""
from __future__ import annotations

import math
import shutil
import wave

import numpy as np
import pytest
import torch

import lottery
from lottery.data.fsdd import (FFT, HOP, MELS, RATE, SAMPLES, SPEAKERS, hz_to_mel, load_fsdd, log_mel,
                               mel_filterbank, mel_to_hz, read_wav, recordings, speakers_of)
from lottery.errors import UserError

from conftest import run_cli


@pytest.fixture(scope="module")
def fsdd_dir(shared_data):
    return shared_data


def _write_wav(path, samples: np.ndarray, rate: int = RATE, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())


def test_wav_files_read_as_float_audio_and_others_are_refused(fsdd_dir, tmp_path):
    path = fsdd_dir / "fsdd" / "recordings" / "0_george_0.wav"
    audio = read_wav(path)
    with wave.open(str(path)) as handle:
        assert len(audio) == handle.getnframes()
    assert audio.dtype == np.float32 and -1 <= audio.min() < 0 < audio.max() < 1
    _write_wav(tmp_path / "a.wav", np.zeros(100), rate=16000)
    with pytest.raises(UserError, match="a.wav is not mono 16-bit PCM at 8000 Hz"):
        read_wav(tmp_path / "a.wav")
    (tmp_path / "b.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    with pytest.raises(UserError, match="b.wav is not a readable WAV file"):
        read_wav(tmp_path / "b.wav")


def test_mel_scale_matches_the_htk_and_slaney_formulas():
    assert float(hz_to_mel(1000.0, "htk")) == pytest.approx(2595 * math.log10(1 + 1000 / 700))
    assert float(hz_to_mel(700.0, "htk")) == pytest.approx(2595 * math.log10(2))
    assert float(hz_to_mel(500.0, "slaney")) == pytest.approx(7.5)  # linear below 1 kHz: f / (200/3)
    assert float(hz_to_mel(1000.0, "slaney")) == pytest.approx(15.0)
    assert float(hz_to_mel(4000.0, "slaney")) == pytest.approx(15 + 27 * math.log(4) / math.log(6.4))
    freqs = torch.tensor([0.0, 100.0, 999.0, 1000.0, 1234.5, 4000.0], dtype=torch.float64)
    for scale in ("htk", "slaney"):
        assert torch.allclose(mel_to_hz(hz_to_mel(freqs, scale), scale), freqs, atol=1e-6)
    bank = mel_filterbank()
    assert bank.shape == (MELS, FFT // 2 + 1) and bank.min() >= 0 and bank.max() <= 1
    centers = mel_to_hz(torch.linspace(float(hz_to_mel(0.0)), float(hz_to_mel(RATE / 2)), MELS + 2))[1:-1]
    bins = torch.linspace(0, RATE / 2, FFT // 2 + 1, dtype=torch.float64)
    nearest = (bins[None, :] - centers[:, None]).abs().argmin(1)
    assert torch.equal(bank.argmax(1), nearest)  # every band peaks at the bin nearest its center: none is empty


def test_features_have_their_shape_are_deterministic_and_a_tone_lands_in_its_band():
    t = torch.arange(SAMPLES) / RATE
    tones = torch.stack([torch.sin(2 * math.pi * f * t) for f in (300.0, 1000.0, 2500.0)])
    features = log_mel(tones)
    assert features.shape == (3, MELS, (SAMPLES - FFT) // HOP + 1)
    assert torch.equal(features, log_mel(tones))
    centers = mel_to_hz(torch.linspace(float(hz_to_mel(0.0)), float(hz_to_mel(RATE / 2)), MELS + 2))[1:-1]
    for row, f in zip(features, (300.0, 1000.0, 2500.0)):
        band = int(row.mean(1).argmax())
        assert abs(float(centers[band]) - f) <= float(centers[band + 1] - centers[band]), (f, float(centers[band]))


def test_md5_checks_and_a_missing_dataset_say_what_is_wrong(fsdd_dir, tmp_path):
    copy = tmp_path / "fsdd"
    (copy / "recordings").mkdir(parents=True)
    shutil.copy(fsdd_dir / "fsdd" / "MD5SUMS", copy / "MD5SUMS")
    for path in (fsdd_dir / "fsdd" / "recordings").iterdir():
        (copy / "recordings" / path.name).symlink_to(path)
    damaged = copy / "recordings" / "7_theo_3.wav"
    damaged.unlink()
    damaged.write_bytes((fsdd_dir / "fsdd" / "recordings" / "7_theo_3.wav").read_bytes()[:-10])
    with pytest.raises(UserError, match="7_theo_3.wav has MD5 .* expected"):
        recordings(copy)
    result = run_cli("find", "fsdd-mlp", "--levels", "0", "--iterations", "1", "--data-dir", str(tmp_path / "none"),
                     "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no FSDD" in result.stderr and "free-spoken-digit-dataset" in result.stderr


def test_splits_share_no_recording_and_the_held_out_speaker_is_only_tested(fsdd_dir):
    standard = load_fsdd(fsdd_dir)
    assert (len(standard.x_train), len(standard.x_test)) == (2700, 300)
    assert standard.x_train.shape[1:] == (1, MELS, (SAMPLES - FFT) // HOP + 1)
    train_rows = {row.numpy().tobytes() for row in standard.x_train.flatten(1)}
    assert len(train_rows) == 2700 and not train_rows & {r.numpy().tobytes() for r in standard.x_test.flatten(1)}
    assert sorted(speakers_of(fsdd_dir)) == sorted([s for s in SPEAKERS for _ in range(50)])  # 5 per digit each
    shifted = lottery.load_dataset("fsdd", fsdd_dir, val_size=300, speakers_out="theo")
    assert set(speakers_of(fsdd_dir, "test", "theo")) == {"theo"} and len(shifted.x_test) == 500
    assert "theo" not in set(speakers_of(fsdd_dir, "train", "theo")) and len(shifted.x_train) + len(shifted.x_val) == 2500
    held = {r.numpy().tobytes() for r in shifted.x_test.flatten(1)}
    assert not held & {r.numpy().tobytes() for r in torch.cat([shifted.x_train, shifted.x_val]).flatten(1)}
    with pytest.raises(UserError, match="speakers_out must be one of"):
        load_fsdd(fsdd_dir, "nobody")
    with pytest.raises(UserError, match="mnist1d has no speakers"):
        lottery.load_dataset("mnist1d", speakers_out="theo")


def test_speech_models_count_their_weights_and_a_tiny_imp_run_trains(fsdd_dir, tmp_path):
    shape = (1, MELS, (SAMPLES - FFT) // HOP + 1)
    for preset, weights in (("fsdd-cnn", 23_824), ("fsdd-mlp", 569_856)):
        model = lottery.build_model(lottery.get_preset(preset).model, shape, 10)
        assert sum(dict(model.named_parameters())[n].numel() for n in lottery.prunable_roles(model)) == weights
    config = lottery.get_preset("fsdd-cnn")
    config.trials, config.prune.levels, config.train.iterations, config.train.eval_every = 1, 1, 40, 20
    config.train.batch_size, config.train.test_curves = 16, False  # small steps; the test set once per network
    run = lottery.find_tickets(config, tmp_path / "run", data_dir=fsdd_dir, options=lottery.RunOptions(progress=False))
    rows = lottery.read_results(run)
    assert {(r["arm"], r["level"]) for r in rows} == {("imp", 0), ("imp", 1), ("reinit", 1), ("random", 1)}
    assert all(r["early_stop_test_accuracy"] > 0.15 for r in rows if r["arm"] == "imp")  # above chance (0.1)


def test_an_md5sums_that_is_not_text_and_a_pipe_for_a_recording_are_named(fsdd_dir, tmp_path):
    """Issue 37, item 13: a binary MD5SUMS and a named pipe in a recording's place are one UserError each (a
    pipe is never opened for a blocking read)."""
    import os

    copy = tmp_path / "fsdd"
    (copy / "recordings").mkdir(parents=True)
    for path in (fsdd_dir / "fsdd" / "recordings").iterdir():
        (copy / "recordings" / path.name).symlink_to(path)
    (copy / "MD5SUMS").write_bytes(b"\xff\xfe\x00binary" * 10)
    with pytest.raises(UserError, match="MD5SUMS is not a text list of MD5 sums"):
        recordings(copy)
    shutil.copy(fsdd_dir / "fsdd" / "MD5SUMS", copy / "MD5SUMS")
    piped = sorted((copy / "recordings").iterdir())[0]
    piped.unlink()
    os.mkfifo(piped)
    with pytest.raises(UserError, match=f"{piped.name} is not a regular file"):
        recordings(copy)
