import torch
from typer.testing import CliRunner

from evallearn.sae.cli import app
from evallearn.sae.model import TopKSAE
from evallearn.sae.train import fraction_of_variance_unexplained, train_sae


def test_topk_sae_learns_a_sparse_dictionary_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, 16, generator=g)
    codes = torch.rand(1000, 32, generator=g) * (torch.rand(1000, 32, generator=g) < 0.08)
    acts = codes @ atoms
    sae = train_sae(acts, expansion=4, k=4, steps=150, batch_size=256, lr=3e-3)
    assert fraction_of_variance_unexplained(sae, acts) < 0.3
    z = sae.encode(acts[:10])
    assert int((z > 0).sum(-1).max()) <= 4
    back = TopKSAE.load(sae.save(tmp_path / "sae"))
    assert torch.allclose(back(acts[:5]), sae(acts[:5]))


def test_sae_train_command_writes_a_loadable_folder(tiny_pipe_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\na red car\n")
    out = tmp_path / "text"
    r = CliRunner().invoke(app, ["train", "--model", str(tiny_pipe_dir), "--site", "text", "--prompts", str(prompts),
                                 "--steps", "5", "--batch-size", "64", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert TopKSAE.load(out).d_in == 32
    r = CliRunner().invoke(app, ["train", "--model", str(tiny_pipe_dir), "--site", "nope", "--out", str(out)])
    assert r.exit_code == 2 and "--site" in r.output
