"""The order a stream's deltas keep: chunks finish in any order, their texts go out in chunk order."""

from worker.gateway.streaming import InOrder


def test_a_chunk_that_finishes_early_waits_for_those_before_it():
    order = InOrder()
    assert order.add(1, "world.", [{"token": " world."}]) == []
    assert order.add(2, "") == []
    assert order.add(0, "Hello") == [("Hello", None), (" world.", [{"token": " world."}])]
    assert order.add(1, "world.") == []  # a chunk reported twice (a redelivered chunk task)
    assert order.add(4, "Again.") == []
    assert order.rest("Hello world. Lost. Again.") == " Lost. Again."  # chunk 3's progress never came
    assert order.sent == "Hello world. Lost. Again."


def test_a_text_that_does_not_continue_what_was_sent_adds_nothing():
    order = InOrder()
    order.add(0, "B: later")
    assert order.rest("A: first B: later") == ""
