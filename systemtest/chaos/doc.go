// Package chaos is memcache's standing fault campaign, in the manner of
// Jepsen: clients upload, replace, read, list and delete through two
// frontends while a nemesis, scheduled from a printed seed, kills, pauses
// and partitions the cluster's processes; every operation is recorded with
// its invocation and completion times, and the histories are checked with
// porcupine (internal/history) for linearizability, lost writes and stale
// reads.
//
// Every role is a real `memcache` process installed by deploy/provision.sh
// and started as its systemd unit would start it: on hosts in network
// namespaces (internal/netns) where the machine allows it, else on loopback
// addresses of one host (no partitions then). It has no code besides its
// tests. See RELIABILITY.md for the long run's figures and how to run it.
package chaos
