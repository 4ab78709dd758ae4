// Package blob stores image bytes in a local directory or in S3.
//
// A Store keeps immutable objects under names chosen by the caller. The
// frontend makes every name unique per upload (for example "img/<uuid>") and
// never derives it from a user's file name (DESIGN.md §8, §12), so a Store
// treats a name as opaque but still refuses names that could escape its
// directory or prefix (see ErrBadName).
package blob

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors returned by the stores. Backend errors that mean the same thing are
// translated to these at the package boundary; test with errors.Is.
var (
	// ErrNotFound is returned by Get when no object has the name.
	ErrNotFound = errors.New("blob: not found")
	// ErrBadName is returned when an object name is empty, absolute, longer
	// than MaxNameLen, not UTF-8, or contains "..", a backslash, a NUL or
	// another control character, an empty or "." path segment, or a trailing
	// slash. Nothing is written for a bad name.
	ErrBadName = errors.New("blob: bad object name")
	// ErrNoBucket is returned by NewS3 (and by S3 operations) when the
	// configured bucket does not exist.
	ErrNoBucket = errors.New("blob: S3 bucket does not exist")
	// ErrConfig is returned by NewS3 for an unusable S3Config.
	ErrConfig = errors.New("blob: bad configuration")
)

// MaxNameLen is the longest object name accepted, in bytes (the S3 key limit).
const MaxNameLen = 1024

// checkName reports whether name is safe to use as an object name. Names use
// "/" as the separator on every platform.
func checkName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%w %q: %s", ErrBadName, name, why) }
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrBadName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrBadName, MaxNameLen)
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return bad("absolute")
	case strings.Contains(name, ".."):
		return bad(`contains ".."`)
	case strings.ContainsRune(name, '\\'):
		return bad("contains a backslash")
	case strings.IndexFunc(name, unicode.IsControl) >= 0: // includes NUL
		return bad("contains a control character")
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "" || seg == "." {
			return bad(`empty or "." path segment`)
		}
	}
	return nil
}
