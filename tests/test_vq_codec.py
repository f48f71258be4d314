"""The vector-quantised rate-distortion autoencoder: the quantiser against brute force and hand-computed k-means
steps, the objective against Pyro's Trace_ELBO and the code length by hand, pyro.factor terms kept out of p(x),
the codec's bitstream round trip, and the per-point scores."""

import csv
import json
import math
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyroib.checkpoint import read_jsonl
from pyroib.cli import main
from pyroib.codec import CodecError, code_indices, compress, decode_file, read_file
from pyroib.evaluate import importance_nll
from pyroib.guides.vqvae import Guide
from pyroib.models.vqvae import Config, Model
from pyroib.objectives import InfoELBO
from pyroib.plates import data_plate
from pyroib.program import ProgramError, check_traces
from pyroib.quantisation import COUNT_FLOOR, CodebookPrior, VectorQuantiser, lookup, nearest
from pyroib.run import load_run
from pyroib.scores import point_terms

TINY = ["--dataset", "digits", "--device", "cpu", "--no-progress", "--batch-size", "64", "--hidden", "128"]
# 4 positions of 16 codewords: a 16-bit code; a fast EMA, since digits gives only 23 steps per epoch
SMALL = ["--positions", "4", "--codebook-size", "16", "--code-dim", "4", "--ema-decay", "0.9"]


def _brute_force_nearest(z, codebook, penalty=None):
    # z (n, M, D), codebook (M, K, D): every distance written out
    distances = ((z.unsqueeze(2) - codebook.unsqueeze(0)) ** 2).sum(-1)  # (n, M, K)
    if penalty is not None:
        distances = distances + penalty
    return distances.argmin(-1)


@pytest.mark.parametrize("shared", [False, True])
def test_nearest_codeword_and_entropy_constrained_cells_match_brute_force(shared):
    z = torch.randn(50, 3, 2)
    codebook = torch.randn(1 if shared else 3, 7, 2)
    full = codebook.expand(3, -1, -1)
    assert torch.equal(nearest(z, codebook), _brute_force_nearest(z, full))
    penalty = torch.rand(3, 7) * 3
    assert torch.equal(nearest(z, codebook, penalty), _brute_force_nearest(z, full, penalty))
    assert torch.equal(
        lookup(nearest(z, codebook), codebook),
        torch.gather(
            full.unsqueeze(0).expand(50, -1, -1, -1),
            2,
            _brute_force_nearest(z, full)[..., None, None].expand(-1, -1, 1, 2),
        ).squeeze(2),
    )


def test_codebook_prior_scores_the_cell_and_draws_codewords_with_its_probabilities():
    quantiser = VectorQuantiser(2, 5, 3)
    quantiser.code_counts.copy_(torch.tensor([[1.0, 2, 3, 4, 10], [5.0, 5, 5, 5, 5]]))
    prior = CodebookPrior(quantiser.log_probabilities().expand(400, 2, 5), quantiser)
    z = torch.randn(400, 2, 3)
    index = _brute_force_nearest(z, quantiser.codebook)
    counts = quantiser.code_counts + COUNT_FLOOR
    probabilities = counts / counts.sum(-1, keepdim=True)
    expected = probabilities.log()[torch.arange(2), index].sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)
    draws = prior.sample()  # (400, 2, 3): codewords, indices drawn with probabilities π
    drawn = nearest(draws, quantiser.codebook)
    assert torch.equal(lookup(drawn, quantiser.codebook), draws)
    frequency = torch.nn.functional.one_hot(drawn[:, 0], 5).double().mean(0)
    assert torch.allclose(frequency, probabilities[0].double(), atol=0.07)


def test_straight_through_passes_the_gradient_at_the_codeword_to_the_encoding():
    quantiser = VectorQuantiser(2, 4, 3).eval()
    z = torch.randn(6, 2, 3, requires_grad=True)
    quantised, codewords, _ = quantiser(z)
    assert torch.equal(quantised.detach(), codewords)
    weights = torch.randn(6, 2, 3)
    (weights * quantised**2).sum().backward()
    torch.testing.assert_close(z.grad, 2 * weights * codewords)


def test_ema_update_is_the_moving_average_of_a_k_means_step_and_counts_feed_the_entropy_model():
    torch.manual_seed(0)
    quantiser = VectorQuantiser(1, 3, 2, decay=0.9, restart_below=0.0).train()
    quantiser.initialised.fill_(True)
    codebook = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]]])
    quantiser.codebook.copy_(codebook)
    quantiser.ema_sum.copy_(codebook)
    z = torch.cat([torch.randn(30, 1, 2) * 0.3, torch.randn(10, 1, 2) * 0.3 + 5]).requires_grad_()
    with torch.enable_grad():
        quantiser(z)
    assignment = _brute_force_nearest(z.detach(), codebook)[:, 0]
    counts = torch.bincount(assignment, minlength=3).float()
    sums = torch.stack([z.detach()[assignment == k, 0].sum(0) for k in range(3)])
    ema_count = 0.9 + 0.1 * counts
    expected = (0.9 * codebook[0] + 0.1 * sums) / ema_count[:, None]
    torch.testing.assert_close(quantiser.codebook[0], expected)
    torch.testing.assert_close(quantiser.code_counts[0], 0.99 + 0.01 * counts)
    # with no memory the update is exactly Lloyd's step: each used codeword moves to the mean of its encodings
    lloyd = VectorQuantiser(1, 3, 2, decay=1e-6, restart_below=0.0).train()
    lloyd.initialised.fill_(True)
    lloyd.codebook.copy_(codebook)
    lloyd.ema_sum.copy_(codebook)
    with torch.enable_grad():
        lloyd(z)
    for k in (0, 1):
        torch.testing.assert_close(lloyd.codebook[0, k], z.detach()[assignment == k, 0].mean(0), atol=1e-4, rtol=0)


def test_the_entropy_model_bounds_a_codes_cost_and_ignores_draws_from_itself():
    quantiser = VectorQuantiser(2, 4, 3).train()
    quantiser.code_counts.copy_(torch.tensor([[1e-30, 64.0, 64.0, 0.0], [16.0, 16.0, 16.0, 16.0]]))
    worst = -quantiser.log_probabilities()[0].min().item()
    assert worst == pytest.approx(math.log((128 + 4 * COUNT_FLOOR) / COUNT_FLOOR), rel=1e-5)
    with torch.enable_grad():
        quantiser(torch.randn(8, 2, 3))  # an encoding batch: initialises and learns
    before = {k: v.clone() for k, v in quantiser.state_dict().items()}
    prior = CodebookPrior(quantiser.log_probabilities().expand(32, 2, 4), quantiser)
    with torch.enable_grad():
        quantiser(prior.sample())  # the model run forward from its prior (a data critic's fakes)
    assert all(torch.equal(before[k], v) for k, v in quantiser.state_dict().items())


def test_dead_codewords_restart_on_the_batch_and_evaluation_changes_nothing():
    quantiser = VectorQuantiser(1, 4, 2, decay=0.5, restart_below=0.1).train()
    z = torch.randn(64, 1, 2) * 0.1
    with torch.enable_grad():
        quantiser(z)  # the first batch initialises the codebook on its own encodings
    assert quantiser.codebook.abs().max() < 1.0
    quantiser.codebook.data[0, 3] = 100.0  # a codeword no encoding will reach
    quantiser.ema_sum.data[0, 3] = 100.0
    for _ in range(6):
        with torch.enable_grad():
            quantiser(z)
    assert quantiser.codebook[0, 3].abs().max() < 1.0, "the dead codeword was not restarted on the data"
    frozen = {k: v.clone() for k, v in quantiser.state_dict().items()}
    quantiser.eval()
    quantiser(z)
    with torch.no_grad():
        quantiser.train()(z)
    assert all(torch.equal(frozen[k], v) for k, v in quantiser.state_dict().items())


def _small_program(**overrides):
    config = Config(data_shape=(1, 4, 4), positions=3, codebook_size=5, code_dim=2, hidden=(8,), **overrides)
    model, guide = Model(config), Guide(config)
    model.quantiser.code_counts.copy_(torch.rand(3, 5) + 0.1)
    return model.eval(), guide.eval()


def test_objective_is_distortion_plus_code_length_plus_commitment_and_equals_trace_elbo():
    model, guide = _small_program(commitment=0.7)
    x = torch.rand(6, 1, 4, 4)
    terms = InfoELBO().terms(model, guide, x)
    e = guide.encode_codes(x).detach()
    index = model.quantiser.assign(e)
    code_length = -model.quantiser.log_probabilities()[torch.arange(3), index].sum(-1)
    reconstruction = model.decoder(lookup(index, model.quantiser.codebook).flatten(-2))
    distortion = -model.likelihood(reconstruction).log_prob(x)
    commitment = 0.7 * (e - lookup(index, model.quantiser.codebook)).pow(2).sum((-2, -1))
    torch.testing.assert_close(terms.values["rate"], code_length.mean().detach())
    torch.testing.assert_close(terms.values["distortion"], distortion.mean().detach())
    torch.testing.assert_close(terms.values["factor/commitment"], commitment.mean().detach())
    # the ELBO leaves the penalty out; the loss has it, and is Pyro's own Trace_ELBO loss (which counts the factor)
    torch.testing.assert_close(terms.values["elbo"], -(code_length + distortion).mean().detach())
    torch.testing.assert_close(terms.loss, (code_length + distortion + commitment).sum().detach())
    pyro_loss = Trace_ELBO().differentiable_loss(model, guide, x)
    torch.testing.assert_close(terms.surrogate, pyro_loss)
    pyro_grads = torch.autograd.grad(pyro_loss, list(guide.parameters())[:2])
    ours = torch.autograd.grad(InfoELBO().terms(model, guide, x).surrogate, list(guide.parameters())[:2])
    for a, b in zip(pyro_grads, ours):
        torch.testing.assert_close(a, b)
    # importance sampling from a point mass is exact, and the penalty is not part of log p(x)
    nll = importance_nll(model, guide, x, samples=3)
    torch.testing.assert_close(nll, (code_length + distortion).detach())
    per_point = point_terms(model, guide, x)
    torch.testing.assert_close(per_point["rate"], code_length.detach())
    torch.testing.assert_close(per_point["factor/commitment"], commitment.detach())


def test_a_factor_in_the_guide_is_refused_by_rule_7():
    model, _ = _small_program()

    class PenalisedGuide(Guide):
        def forward(self, x, y=None, index=None, size=None):
            with data_plate(x, index, size):
                pyro.factor("penalty", torch.zeros(x.shape[0]), has_rsample=True)
                return pyro.sample("z", dist.Delta(self.encode_codes(x), event_dim=2))

    guide = PenalisedGuide(model.config)
    with pytest.raises(ProgramError, match="rule 7"):
        check_traces(model, guide, torch.rand(4, 1, 4, 4))


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("vq") / "run"
    argv = ["train", "--model", "vqvae", *TINY, *SMALL, "--epochs", "40", "--out", str(run), "--seed", "1"]
    assert main(argv) == 0
    return run


def test_vq_run_reconstructs_digits_better_than_k_means_with_a_quarter_of_its_bits(vq_run, capsys):
    from sklearn.cluster import KMeans

    from pyroib.data import load_spec_dataset

    capsys.readouterr()
    assert main(["evaluate", str(vq_run), "--json", "--device", "cpu", "--iw-samples", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    data = load_spec_dataset(load_run(vq_run).spec, "cpu")
    train_x, test_x = data.train.flatten(1).numpy(), data.split("test")[0].flatten(1).numpy()
    # 16 centroids on pixels: a 4-bit code against the run's 16 bits (measured 0.036 against 0.025)
    kmeans = KMeans(16, n_init=3, random_state=0).fit(train_x)
    kmeans_mse = float(((kmeans.cluster_centers_[kmeans.predict(test_x)] - test_x) ** 2).mean())
    assert result["mse"] < kmeans_mse, (result["mse"], kmeans_mse)
    assert result["bits_per_image"] == pytest.approx(result["rate"] / math.log(2))
    assert result["code_entropy"] <= result["rate"] + 1e-6 <= 4 * math.log(16) + 0.5
    assert 2 <= result["codewords_used"] <= 16 and result["codebook_perplexity"] > 2
    assert result["nll_iw"] == pytest.approx(-result["elbo"], rel=1e-4)


def test_compress_and_decompress_round_trip_bit_for_bit(vq_run, tmp_path, capsys):
    file, out = tmp_path / "test.bin", tmp_path / "decoded"
    capsys.readouterr()
    assert main(["compress", str(vq_run), "--out", str(file), "--json", "--device", "cpu"]) == 0
    sizes = json.loads(capsys.readouterr().out)
    assert main(["decompress", str(file), "--out", str(out), "--device", "cpu"]) == 0
    run = load_run(vq_run)
    from pyroib.data import load_spec_dataset

    test_x, _ = load_spec_dataset(run.spec, "cpu").split("test")
    expected = code_indices(run, test_x)
    assert np.array_equal(np.load(out / "codes.npy"), expected.numpy())
    assert len(list(out.glob("*.png"))) == test_x.shape[0] == sizes["images"]
    assert file.stat().st_size == sizes["file_bytes"] == sizes["header_bytes"] + sizes["payload_bytes"]
    # the range coder's payload is the code length under π to within its final 32-bit words
    assert 0 <= 8 * sizes["payload_bytes"] - sizes["code_length_bits_per_image"] * sizes["images"] <= 64 + 1e-3
    from PIL import Image

    first = np.asarray(Image.open(out / "00000.png"))
    decoded = run.model.decode_indices(expected[:1]).detach().clamp(0, 1)
    assert np.array_equal(first, (decoded[0, 0] * 255).round().to(torch.uint8).numpy())


def test_bad_bitstreams_and_other_models_are_refused(vq_run, tmp_path):
    run = load_run(vq_run)
    file = tmp_path / "x.bin"
    compress(run, torch.rand(5, 1, 8, 8), file, "test")
    header, words = read_file(file)
    with torch.no_grad():
        run.model.decoder.body[0].weight.add_(1.0)  # another model than the one that wrote the file
    with pytest.raises(CodecError, match="not the model"):
        decode_file(run, header, words)
    (tmp_path / "junk.bin").write_bytes(b"not a bitstream")
    with pytest.raises(CodecError, match="not a pyroib bitstream"):
        read_file(tmp_path / "junk.bin")
    for cut in (3, 4, 8):  # whole 32-bit words missing decode to wrong indices without the header's record
        (tmp_path / "cut.bin").write_bytes(file.read_bytes()[:-cut])
        with pytest.raises(CodecError, match="truncated"):
            read_file(tmp_path / "cut.bin")
    flipped = bytearray(file.read_bytes())
    flipped[-1] ^= 1
    (tmp_path / "flip.bin").write_bytes(bytes(flipped))
    with pytest.raises(CodecError, match="corrupt"):
        read_file(tmp_path / "flip.bin")


def test_compress_refuses_a_run_without_a_discrete_code(tmp_path, capsys):
    run = tmp_path / "vae"
    assert main(["train", "--model", "vae", *TINY, "--epochs", "1", "--out", str(run), "--latent-dim", "2"]) == 0
    capsys.readouterr()
    assert main(["compress", str(run), "--out", str(tmp_path / "f.bin"), "--device", "cpu"]) == 2
    assert "vector-quantised" in capsys.readouterr().err


def test_score_writes_one_row_per_point_with_every_term(vq_run, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", str(vq_run), "--out", str(out), "--iw-samples", "2", "--device", "cpu"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    run = load_run(vq_run)
    from pyroib.data import load_spec_dataset

    test_x, test_y = load_spec_dataset(run.spec, "cpu").split("test")
    assert len(rows) == test_x.shape[0]
    assert {"label", "rate", "distortion", "factor/commitment", "elbo", "nll_iw", "marginal_log_ratio"} <= set(rows[0])
    assert [int(r["label"]) for r in rows[:20]] == test_y[:20].tolist()
    rate = np.array([float(r["rate"]) for r in rows])
    index = code_indices(run, test_x)
    code_length = -run.model.quantiser.log_probabilities()[torch.arange(4), index].sum(-1).detach().numpy()
    np.testing.assert_allclose(rate, code_length, rtol=1e-4, atol=1e-4)


def test_generative_codec_trains_a_critic_on_reconstructions_and_decodes_files_reproducibly(tmp_path, capsys):
    run = tmp_path / "gc"
    critic = ["--critic-width", "16", "--critic-depth", "1", "--noise-dim", "3"]
    argv = ["train", "--model", "generative-codec", *TINY, *SMALL, *critic, "--epochs", "2", "--out", str(run)]
    assert main(argv) == 0, capsys.readouterr().err
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert math.isfinite(row["train_critic_data_kl"]) and "train_marginal_kl" not in row  # B is off (weight 0)
    assert row["train_rate/u"] == 0.0  # U is drawn by the guide from its prior: no rate
    loaded = load_run(run)
    assert loaded.objective.data_fakes == "reconstructions" and loaded.model.config.noise_dim == 3
    capsys.readouterr()
    file = tmp_path / "f.bin"
    assert main(["compress", str(run), "--out", str(file), "--device", "cpu"]) == 0
    for out in ("a", "b"):
        assert main(["decompress", str(file), "--out", str(tmp_path / out), "--device", "cpu"]) == 0
    first, second = (sorted((tmp_path / out).glob("*.png")) for out in ("a", "b"))
    assert len(first) == 360 and all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    # the noise matters: another draw of U decodes the same codes into other images
    index = torch.as_tensor(np.load(tmp_path / "a" / "codes.npy"))
    one, other = (loaded.model.decode_indices(index[:50], torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.allclose(one, other)


def test_one_class_runs_train_on_that_class_and_are_scored_on_every_test_point(tmp_path, capsys):
    run = tmp_path / "one"
    argv = ["train", "--model", "vqvae", *TINY, *SMALL, "--epochs", "1", "--classes", "3", "--out", str(run)]
    assert main(argv) == 0, capsys.readouterr().err
    from pyroib.data import load_spec_dataset

    splits = load_spec_dataset(load_run(run).spec, "cpu")
    assert set(splits.train_labels.tolist()) == {3} and set(splits.val_labels.tolist()) == {3}
    assert len(set(splits.test_labels.tolist())) == 10
    assert main(["train", "--model", "vqvae", *TINY, "--classes", "12", "--out", str(tmp_path / "bad")]) == 2
    assert "not labels of digits" in capsys.readouterr().err


def test_report_shows_decompressed_images_entropy_model_samples_and_bits_per_position(vq_run, capsys):
    assert main(["report", str(vq_run), "--iw-samples", "2", "--device", "cpu"]) == 0, capsys.readouterr().err
    report = (vq_run / "report" / "report.md").read_text()
    for png in ("codec_reconstructions.png", "codec_samples.png", "codec_positions.png"):
        assert (vq_run / "report" / png).stat().st_size > 1000 and png in report
    assert "| bits_per_image |" in report and "| factor/commitment |" in report


SPATIAL = ["--network", "conv", "--spatial", "true", "--hidden", "16", "--positions", "16", "--codebook-size", "16"]
SPATIAL += ["--code-dim", "4", "--ema-decay", "0.9", "--dataset", "digits", "--device", "cpu", "--no-progress"]


def test_a_spatial_code_keeps_the_layout_of_the_image_and_round_trips_through_the_codec(tmp_path, capsys):
    run_dir = tmp_path / "spatial"
    assert main(["train", "--model", "vqvae", *SPATIAL, "--epochs", "2", "--out", str(run_dir)]) == 0
    run = load_run(run_dir)
    # 8 x 8 digits through one 4x4 stride-2 layer: a 4 x 4 grid, row by row (position 4 i + j for cell (i, j)). A
    # pixel in the bottom-left corner reaches only cell (3, 0), position 12; the codeword of cell (0, 1), position 1,
    # reaches only pixels of rows 0-2 (a column-major grid would put both elsewhere)
    x = torch.rand(3, 1, 8, 8)
    moved = x.clone()
    moved[..., 7, 0] += 1.0
    with torch.no_grad():
        codes, moved_codes = run.guide.encode_codes(x), run.guide.encode_codes(moved)
    assert codes.shape == (3, 16, 4)
    changed = [m for m in range(16) if not torch.equal(codes[:, m], moved_codes[:, m])]
    assert changed == [12]
    index = run.model.quantiser.assign(codes)
    other = index.clone()
    other[:, 1] = (other[:, 1] + 1) % 16
    with torch.no_grad():
        image, other_image = run.model.decode_indices(index), run.model.decode_indices(other)
    rows = [r for r in range(8) if not torch.equal(image[..., r, :], other_image[..., r, :])]
    assert rows and max(rows) <= 2
    # the bitstream holds 16 positions per image and decodes back to the same indices
    file, out = tmp_path / "test.bin", tmp_path / "decoded"
    capsys.readouterr()
    assert main(["compress", str(run_dir), "--out", str(file), "--json", "--device", "cpu"]) == 0
    assert main(["decompress", str(file), "--out", str(out), "--device", "cpu"]) == 0
    from pyroib.data import load_spec_dataset

    test_x, _ = load_spec_dataset(run.spec, "cpu").split("test")
    assert np.array_equal(np.load(out / "codes.npy"), code_indices(run, test_x).numpy())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--spatial", "true", "--positions", "16", "--hidden", "16"], "feature map of the conv network"),
        (["--spatial", "true", "--network", "conv", "--hidden", "16"], "4 x 4 .* pass --positions 16"),
    ],
)
def test_a_spatial_code_needs_the_conv_network_and_one_position_per_cell(tmp_path, capsys, flags, message):
    argv = ["train", "--model", "vqvae", "--dataset", "digits", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main([*argv, *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
