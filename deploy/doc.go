// Package deploy holds what a multi-host installation is made of: a systemd
// unit per role (systemd/), documented environment files (env/) and the one
// provisioning script (provision.sh) that the Vagrantfile, the
// network-namespace tests and EC2 instances use. Its tests check those files
// offline, and internal/systemd starts roles from them.
//
// Its one piece of Go, NodeUserData, renders the EC2 user data of a cache
// node: a script carrying this build's provision.sh and node unit, which
// installs the node with them at first boot.
package deploy
