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



def test_reserve_makes_objects_ahead_for_that_many_users():
    made = []
    pool = Pool(lambda: made.append(object()) or made[-1])
    pool.reserve(3)
    assert len(made) == pool.size == 3
    pool.reserve(2)  # already enough
    with pool.take() as a, pool.take() as b, pool.take() as c:
        assert {id(a), id(b), id(c)} == {id(m) for m in made}  # three users at once: nothing made while serving
    assert len(made) == 3
    with pool.take(), pool.take(), pool.take(), pool.take():  # a fourth at once: made on demand, and counted
        assert pool.size == len(made) == 4
