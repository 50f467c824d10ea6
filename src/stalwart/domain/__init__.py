"""Pure data and rules: jobs, plans, steps, reviews, events, state machines, retry policy.

Nothing here does I/O.
"""
