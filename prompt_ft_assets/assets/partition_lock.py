"""One materialization per partition at a time, through the results store's advisory lock.

Two runs of the same partition would train or generate the same rows twice, and two finetunes
of one partition would replace each other's checkpoint folder while it is being written. With
the lock, the second run fails at once with a message that names the partition and the process
that holds it.
"""

import functools
from typing import Callable, TypeVar

ResultT = TypeVar("ResultT")


def exclusive_partition(function: Callable[..., ResultT]) -> Callable[..., ResultT]:
    """Wrap an asset function so its body runs under the lock of (asset name, partition key).

    The function must take the execution context first and the results store resource as the
    keyword argument `results`, which is how Dagster passes resources. functools.wraps keeps the
    signature that Dagster reads to find the context and the resources.
    """

    @functools.wraps(function)
    def locked(context, *args, **kwargs) -> ResultT:
        store = kwargs["results"].store()
        with store.partition_lock(function.__name__, str(context.partition_key)):
            return function(context, *args, **kwargs)

    return locked
