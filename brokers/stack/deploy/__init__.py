"""DP2 on a cluster: the compose file and the Kubernetes manifests, generated.

Why generated: the files must name every topic, service and principal the code
declares, with the right layout (three replicas, min ISR 2, two instances of each
service, probes on /healthz at its port) and the ACLs brokers.stack.access derives
— and must not drift when the code changes. So they are written from the code:

    model       what a deployment holds, read from the code's declarations
    compose     deploy/compose/: three apache/kafka nodes, PostgreSQL, the services,
                Prometheus, Grafana
    kubernetes  deploy/k8s/: Strimzi Kafka, KafkaTopic, KafkaUser, Deployments,
                Services, a ServiceMonitor
    files       the generated files by path; write them or name the stale ones
    yamltext    YAML text without a YAML library, the same on every machine

``python -m brokers.stack.deploy`` rewrites them (``--check`` only looks);
tests/unit/test_deploy_files.py fails when they are stale.
"""
