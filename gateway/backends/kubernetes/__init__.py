"""The Kubernetes backend: nodes from the cluster, replicas as pods, through kubernetes-asyncio.

One module per idea, imports pointing down the list:

- ``errors``: how an API status becomes one of ``gateway.errors``' ``KubernetesError``s;
- ``client``: configuration (kubeconfig or in-cluster), the client-side rate limit, raw JSON calls;
- ``inventory``: nodes and what they offer, minus pods Muster does not own (``Inventory``);
- ``observing``, ``creating``, ``deleting``: one module per verb on Muster's pods and services;
- ``runtime``: ``KubernetesRuntime``, the ``Runtime`` the reconciler drives.

Typical wiring::

    kube = settings.kubernetes
    api = await kube_client(kube.kubeconfig, qps=kube.qps, burst=kube.burst)
    nodes = NodeCache(api)
    inventory = KubernetesInventory(api, nodes=nodes)
    runtime = KubernetesRuntime(api, cluster_domain=None, nodes=nodes)  # runtime.close() closes api
"""

from gateway.backends.kubernetes.client import Kube, RateLimitedApiClient, TokenBucket, kube_client
from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime

__all__ = [
    "Kube",
    "KubernetesInventory",
    "KubernetesRuntime",
    "NodeCache",
    "RateLimitedApiClient",
    "TokenBucket",
    "kube_client",
]
