"""vitserve.pool: one object per concurrent user, reused afterwards."""

from __future__ import annotations

import threading

from vitserve.pool import Pool


def test_pool_makes_one_object_per_concurrent_user_and_reuses_them():
    made = []
    pool = Pool(lambda: made.append(object()) or made[-1])
    with pool.take() as first:
        with pool.take() as second:  # the first is in use: a new one
            assert second is not first
    assert len(made) == 2
    both_inside = threading.Barrier(2, timeout=5)
    taken = []

    def user():
        with pool.take() as item:
            taken.append(item)
            both_inside.wait()  # both hold an object at once

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 2 and {id(i) for i in taken} == {id(m) for m in made}  # reused, none made
    with pool.take() as again:
        assert again in made
