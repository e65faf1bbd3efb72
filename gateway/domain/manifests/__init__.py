"""What a job becomes on a cluster: its Kubernetes objects and each replica's environment."""
