"""The math of the papers as pure functions: the policy step, advantages, losses, B2's schedule.

Nothing here knows about pipelines, files or processes: tensors in, tensors out.
"""
