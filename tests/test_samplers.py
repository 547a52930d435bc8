import numpy as np

from data.samplers import pace_indices, training_clip_indices, uniform_indices


def test_pace_sampler_reproduces_the_papers_example():
    # 30 frames, start at frame 20, pace 2 (1-based numbering in the paper).
    got = pace_indices(num_frames=30, start=19, pace=2, n=16) + 1
    assert got.tolist() == [20, 22, 24, 26, 28, 30, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


def test_pace_one_is_consecutive_and_loops_to_the_first_frame():
    assert pace_indices(10, 7, 1, 6).tolist() == [7, 8, 9, 0, 1, 2]


def test_pace_indices_stay_in_range_for_every_pace_and_start():
    for pace in range(1, 6):
        for start in range(0, 20):
            idx = pace_indices(20, start, pace, 16)
            assert idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < 20


def test_uniform_sampling_is_int64_and_covers_long_videos():
    idx = uniform_indices(300, 32)  # the released code's int8 linspace overflowed here
    assert idx.dtype == np.int64
    assert idx[0] == 0 and idx[-1] >= 280 and np.all(np.diff(idx) > 0)


def test_uniform_sampling_repeats_frames_of_short_videos():
    idx = uniform_indices(8, 32)
    assert len(idx) == 32 and idx.max() == 7 and np.all(np.diff(idx) >= 0)


def test_training_clips_are_16_consecutive_frames():
    rng = np.random.default_rng(0)
    for n in (16, 17, 40):
        idx = training_clip_indices(n, 16, rng)
        assert len(idx) == 16 and np.all(np.diff(idx) == 1)
    assert training_clip_indices(5, 16, rng).max() < 5


def test_pace_sampler_clamps_the_restart_for_videos_shorter_than_the_pace():
    # the restart frame is pace - 1 (0-based), but never past the last frame of the video
    assert pace_indices(3, 1, 5, 6).tolist() == [1, 2, 2, 2, 2, 2]
    assert pace_indices(4, 0, 5, 5).tolist() == [0, 3, 3, 3, 3]
    assert pace_indices(5, 0, 5, 4).tolist() == [0, 4, 4, 4]       # pace == length: restart at the last frame
    assert pace_indices(6, 2, 5, 5).tolist() == [2, 4, 4, 4, 4]    # 2 + 5 passes the end; restart at frame 4
    assert pace_indices(1, 0, 3, 4).tolist() == [0, 0, 0, 0]
    for n in range(1, 6):
        for pace in range(1, 6):
            for start in range(n):
                idx = pace_indices(n, start, pace, 16)
                assert idx.min() >= 0 and idx.max() < n, (n, pace, start)
