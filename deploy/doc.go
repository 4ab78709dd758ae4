// Package deploy holds what a multi-host installation is made of: a systemd
// unit per role (systemd/), documented environment files (env/) and the one
// provisioning script (provision.sh) that the Vagrantfile and the
// network-namespace tests use. It has no Go code; its tests check those
// files offline, and internal/systemd starts roles from them.
package deploy
