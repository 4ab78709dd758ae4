// Package gossip joins processes into one memberlist cluster and reports who is in it.
//
// Cache nodes, manager replicas and frontends all join the same
// hashicorp/memberlist cluster. Each member advertises a small JSON [Meta]
// (its role, ID and HTTP base URL) as memberlist node metadata, so any member
// can list the others with [Gossip.Members] or follow changes with
// [Gossip.Subscribe].
//
// # Design note: telling a graceful leave from a failure
//
// memberlist calls EventDelegate.NotifyLeave both when a member leaves
// gracefully and when it is declared dead. Internally it records the
// difference (StateLeft when the dead message came from the node itself,
// StateDead otherwise), but in v0.7.0 that state lives in the unexported
// nodeState.State field, which shadows the embedded Node.State: the *Node
// handed to NotifyLeave always carries the zero value, StateAlive
// (hashicorp/memberlist issues #266 and #293, unmerged PR #321).
//
// So this package carries the distinction itself: [Gossip.Leave] first
// re-advertises the member's metadata with a "leaving" flag and waits for
// that update to be gossiped, and only then calls memberlist's Leave. A
// NotifyLeave for a member whose last known metadata has the flag is
// reported as [EventLeave]; any other is reported as [EventFail]. If the
// leaving notice is lost on the way, a graceful leave is reported as a
// failure, never the other way round (except for a member that crashes in
// the middle of leaving), so consumers must treat both as "the member is
// gone".
package gossip
