"""Whole items shared out over SP ranks: every item once, the largest first to the least loaded rank."""

from ulysses_pro.parallel.work_split import owners


def test_items_go_whole_to_the_least_loaded_rank_largest_first():
    sizes = [100, 10, 60, 50, 5]
    owner = owners(sizes, 2)
    # 100 -> rank 0; 60, 50 -> rank 1 (110); 10 -> rank 0 (110); 5: a tie, to the lower rank
    assert owner == [0, 0, 1, 1, 0]
    loads = [sum(s for s, o in zip(sizes, owner) if o == rank) for rank in range(2)]
    assert loads == [115, 110]
    assert owners(sizes, 2) == owner  # deterministic: every rank computes the same owners


def test_more_ranks_than_items_leaves_ranks_idle_and_one_rank_takes_everything():
    assert owners([4, 4], 4) == [0, 1]
    assert owners([3, 1, 2], 1) == [0, 0, 0]
    assert owners([], 2) == []


def test_time_pieces_cut_videos_into_temporal_groups_and_keep_images_whole():
    from ulysses_pro.parallel.work_split import time_pieces

    assert time_pieces([(1, 4, 6), (3, 2, 2), (1, 8, 4)]) == [
        (0, 0, 4, 6),
        (1, 0, 2, 2),
        (1, 1, 2, 2),
        (1, 2, 2, 2),
        (2, 0, 8, 4),
    ]
    # one long video over 4 ranks: every rank encodes a quarter of its frames
    pieces = time_pieces([(8, 16, 16)])
    assert sorted(owners([h * w for *_, h, w in pieces], 4)) == [0, 0, 1, 1, 2, 2, 3, 3]
