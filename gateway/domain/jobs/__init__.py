"""Job specs: the typed values, the checks that make them from client JSON, the stored document
read back, the pods a spec asks for, and the Kubeflow TFJob translation."""
