"""Sharded, resumable batches: restore gives the uninterrupted next batch; ranks' parts make up the global batch."""

import numpy as np
import pytest
import torch

from bar import UserError
from bar.data.codes import CodesStore, ShardWriter
from bar.data.datasets import TensorImages
from bar.data.loader import ShardedBatchSampler, codes_loader, image_loader


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    n, L, k = 37, 16, 12
    g = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 2, (n, L, k), generator=g, dtype=torch.uint8) for _ in range(2)]
    w = ShardWriter(root, n_total=n, tokens=L, values_per_token=k, kind="bits")
    w.append(views, torch.arange(n))
    w.close()
    return CodesStore(root)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restore_gives_the_uninterrupted_next_batch(store, num_workers):
    G, N = 8, 6                                          # 37 // 8 = 4 batches per epoch: N crosses an epoch
    ref = codes_loader(store, G, seed=3)
    expected = [next(ref) for _ in range(N + 2)]
    run = codes_loader(store, G, seed=3, num_workers=num_workers)
    got = [next(run) for _ in range(N)]
    assert all(_same(a, b) for a, b in zip(got, expected[:N]))
    state = run.state_dict()
    assert (state["epoch"], state["offset"]) == (1, 2)
    run.close()
    fresh = codes_loader(store, G, seed=3, num_workers=num_workers)
    fresh.load_state_dict(state)
    assert _same(next(fresh), expected[N]) and _same(next(fresh), expected[N + 1])
    fresh.close()


def test_rank_parts_restore_and_make_up_the_global_batch(store):
    G, W, N = 8, 2, 5
    single = codes_loader(store, G, seed=1)
    global_batches = [next(single) for _ in range(N + 1)]
    ranks = [codes_loader(store, G, seed=1, rank=r, world_size=W) for r in range(W)]
    parts = [[next(loader) for _ in range(N)] for loader in ranks]
    for j in range(N):
        tokens = torch.cat([parts[r][j][0] for r in range(W)])
        labels = torch.cat([parts[r][j][1] for r in range(W)])
        assert torch.equal(tokens, global_batches[j][0]) and torch.equal(labels, global_batches[j][1])
        assert parts[0][j][0].shape[0] == G // W
    # every rank saves the same position; restored ranks yield their parts of the next global batch
    states = [loader.state_dict() for loader in ranks]
    assert states[0] == states[1]
    cont = [next(loader) for loader in ranks]
    restored = []
    for r in range(W):
        fresh = codes_loader(store, G, seed=1, rank=r, world_size=W)
        fresh.load_state_dict(states[r])
        restored.append(next(fresh))
        assert _same(restored[r], cont[r])
    assert torch.equal(torch.cat([b[0] for b in restored]), global_batches[N][0])
    # the position is rank-independent: a 1-rank run resumes from a 2-rank run's state
    one = codes_loader(store, G, seed=1)
    one.load_state_dict(states[0])
    assert _same(next(one), global_batches[N])


def test_epochs_visit_every_item_once_and_views_are_seeded(store):
    s = ShardedBatchSampler(40, 8, seed=7, views=2)
    it = iter(s)
    epoch0 = [next(it) for _ in range(5)]
    seen = np.concatenate([i for i, _ in epoch0])
    assert sorted(seen.tolist()) == list(range(40))
    views = np.concatenate([v for _, v in epoch0])
    assert set(views.tolist()) == {0, 1} and 10 < views.sum() < 30
    again = iter(ShardedBatchSampler(40, 8, seed=7, views=2))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(epoch0, [next(again) for _ in range(5)]))           # same seed, same views
    views_of = lambda seed: ShardedBatchSampler(40, 40, seed=seed, views=2).global_batch_at(0, 0)      # noqa: E731
    assert not np.array_equal(views_of(8)[1][np.argsort(views_of(8)[0])], views[np.argsort(seen)])  # seed matters
    epoch1 = np.concatenate([next(it)[0] for _ in range(5)])
    assert not np.array_equal(seen, epoch1)                                         # a new order each epoch
    # the store returns the view the sampler drew
    loader = codes_loader(store, 8, seed=2)
    tokens, labels = next(loader)
    idx, v = loader.sampler.global_batch_at(0, 0)
    assert torch.equal(tokens, store.read(idx, v)[0]) and torch.equal(labels, torch.from_numpy(idx))


def test_image_loader_flips_and_resumes():
    images = torch.randint(0, 256, (20, 3, 4, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ds = TensorImages(images, torch.arange(20), num_classes=20)
    loader = image_loader(ds, 4, seed=0, num_workers=0)
    batches = [next(loader) for _ in range(3)]
    state = loader.state_dict()
    nxt = next(loader)
    idx, views = loader.sampler.global_batch_at(0, 3)
    for j, (i, v) in enumerate(zip(idx, views)):
        assert torch.equal(nxt[0][j], images[i].flip(-1) if v else images[i]) and nxt[1][j] == i
    fresh = image_loader(ds, 4, seed=0)
    fresh.load_state_dict(state)
    assert _same(next(fresh), nxt)
    assert len(batches) == 3


def test_bad_batch_or_state_is_refused(store):
    with pytest.raises(UserError, match="not divisible by 3 ranks"):
        ShardedBatchSampler(100, 8, world_size=3)
    with pytest.raises(UserError, match="larger than the dataset"):
        ShardedBatchSampler(4, 8)
    loader = codes_loader(store, 8, seed=0)
    state = loader.state_dict()
    with pytest.raises(UserError, match="global_batch=8, this run has 16"):
        codes_loader(store, 16, seed=0).load_state_dict(state)


class _Unreadable(TensorImages):
    """Item 5 cannot be read: a user's mistake (one line), as an unreadable image file is."""

    def __getitem__(self, i):
        if i == 5:
            raise UserError("cannot read image c0/5.png: broken (remove or replace the file)")
        return super().__getitem__(i)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_mistake_met_fetching_is_its_one_line_from_any_worker(num_workers):
    images = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    loader = image_loader(_Unreadable(images, torch.arange(8), num_classes=8), 8, num_workers=num_workers, flip=False)
    try:
        with pytest.raises(UserError) as err:
            next(loader)
        assert str(err.value) == "cannot read image c0/5.png: broken (remove or replace the file)"
        assert loader.position == (0, 0)              # the batch that failed was not consumed
    finally:
        loader.close()
