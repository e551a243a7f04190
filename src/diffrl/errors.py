"""The project's error types: anything a user can fix, and runs that stop before their last epoch.

Exit codes of the CLI (docs/reliability.md): 0 done, 2 bad input, 3 run halted by a fault guard, a
failed checkpoint write or a reward server that went away, 128 + signal number after SIGINT (130) /
SIGTERM (143) with a checkpoint written.
"""


class DiffrlError(Exception):
    """A problem with the user's input or environment. The CLI prints it on one line and exits 2."""

    exit_code = 2


class RunHalted(DiffrlError):
    """A runtime fault stopped the run (repeated skipped updates, a checkpoint that cannot be written, a
    reward server that went away).

    The newest checkpoint on disk is from before the fault and loads with `--resume`. Exit code 3.
    """

    exit_code = 3


class RewardUnavailable(DiffrlError):
    """A reward service failed at run time: unreachable after the client's retries, crashed (HTTP 500), or
    answering garbage. Not the caller's input: the trainer turns it into RunHalted (exit 3, resumable);
    elsewhere (`diffrl evaluate`) it exits 2 like any other error.
    """


class RunInterrupted(DiffrlError):
    """SIGINT/SIGTERM: a checkpoint was written after the current epoch. Exit code 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
