"""Judging a model: the sets it is judged on (the membership attack's drawn in one place), the
bench's measures (utility with intervals, forgetting, the attack, canary exposure), closeness
to Retrain with PrivLeak and forget quality, and one model's scorecard (`assess`, a request's
standing). What runs a method is elsewhere (methods/, api, bench/).

It may import model/, data/, `metrics` and the shared modules, never methods/, api or above.
"""
