"""Per-image noise depends only on (seed, relative path), never on batch order (method §7)."""
import torch

from frerec_fast.seeding import image_seed, normalise_relpath, sample_eps


def test_eps_independent_of_batch_order_and_size():
    paths = [f"dir/img{i}.png" for i in range(7)]
    mu_all, sig_all = sample_eps(3, paths, 3)
    perm = [4, 0, 6, 2]
    mu_p, sig_p = sample_eps(3, [paths[i] for i in perm], 3)
    assert torch.equal(mu_p, mu_all[perm]) and torch.equal(sig_p, sig_all[perm])
    mu_one, _ = sample_eps(3, [paths[5]], 3)
    assert torch.equal(mu_one[0], mu_all[5])


def test_eps_changes_with_seed_path_and_extra():
    a = sample_eps(0, ["a.png"], 1)[0]
    assert not torch.equal(a, sample_eps(1, ["a.png"], 1)[0])
    assert not torch.equal(a, sample_eps(0, ["b.png"], 1)[0])
    assert not torch.equal(a, sample_eps(0, ["a.png"], 1, 5)[0])
    # Standard normal: a large sample has mean ~0 and std ~1.
    mu, sig = sample_eps(0, [f"{i}.png" for i in range(2000)], 1)
    both = torch.cat([mu, sig]).flatten()
    assert abs(both.mean().item()) < 0.08 and abs(both.std().item() - 1) < 0.08


def test_paths_are_normalised():
    assert normalise_relpath("a\\b\\c.png") == "a/b/c.png" == normalise_relpath("./a/b/c.png")
    assert image_seed(1, "a\\b.png") == image_seed(1, "a/b.png")
    assert 0 <= image_seed(2**40, "x") < 2**63
