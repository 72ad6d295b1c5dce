"""The Ray runtime: worker actors, the Ray transport, checkpoints, the job registry and driver.

Kept free of imports so that ``gramfed`` commands that never touch Ray do not pay for it.
"""
