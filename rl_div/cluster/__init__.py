"""Ray only, in the driver: placement of the run's actors, the actor hosts, the learner group and its
verbs, rank failures, and waiting for a cluster's nodes."""
