// Package systemd starts a role the way its systemd unit would.
//
// The units, environment files and credentials that deploy/provision.sh
// installs under a root prefix are the configuration of a multi-host
// deployment. Tests that run roles on one machine (in network namespaces)
// start them from those same files, so the files are what is tested:
//
//	cmd, err := systemd.Command(prefix, "memcache-manager.service", bin)
//
// reads prefix/etc/systemd/system/memcache-manager.service and its drop-ins
// (prefix/etc/systemd/system/memcache-manager.service.d/*.conf), loads the
// environment as systemd would (Environment=, then each EnvironmentFile=,
// whose settings win; a missing file named with a leading '-' is skipped),
// and returns an *exec.Cmd for the [Service] ExecStart= line with:
//
//   - bin in place of the unit's program (/usr/local/bin/memcache), unless
//     bin is blank, in which case the program is taken from under prefix;
//   - paths that provision.sh puts under the prefix rewritten to lie under it,
//     in arguments and in environment values: /etc/..., the unit's
//     StateDirectory= trees under /var/lib, and the files its LoadCredential=
//     lines name (a value /run/credentials/<unit>/<id> becomes
//     prefix + the credential's source path, which is what the service reads
//     there under systemd);
//   - STATE_DIRECTORY set, and each state directory created (mode 0700), as
//     systemd does before it starts the service;
//   - a minimal environment (PATH and the unit's variables, nothing inherited
//     from the test process) and the prefix as working directory.
//
// Only what decides how the process starts is read; sandboxing (DynamicUser=,
// ProtectSystem=, ...) and restart policy are systemd's and are not emulated.
// The caller owns the command: it may wrap it (ip netns exec), set Stdout,
// add variables to Env, then Start it.
//
// The parsers follow systemd.syntax(7) and systemd.exec(5): comments are lines
// starting with '#' or ';', a unit line ending in '\' continues on the next,
// an empty assignment resets a list setting, values are split into words with
// "double" and 'single' quotes and C escapes. Environment files take
// KEY=VALUE lines with single quotes (literal), double quotes (where \ escapes
// " \ ` $ and a newline) and backslash-newline continuation. Where systemd
// would skip a malformed line with a warning, these parsers return an error,
// so that a mistake in the deploy files fails a test instead.
package systemd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// UnitDir is where units are installed, relative to the root prefix.
const UnitDir = "/etc/systemd/system"

// DefaultPath is the PATH systemd gives services.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("systemd syntax")

// EnvironmentFile is one EnvironmentFile= setting.
type EnvironmentFile struct {
	Path     string
	Optional bool // written with a leading '-': a missing file is skipped
}

// Credential is one LoadCredential=ID:PATH setting: systemd copies PATH to
// $CREDENTIALS_DIRECTORY/ID (/run/credentials/<unit>/ID), readable by the
// service's user only.
type Credential struct {
	ID   string
	Path string
}

// Unit is what a unit file's [Service] section says about starting the
// process.
type Unit struct {
	Name             string            // file name, e.g. "memcache-node.service"
	ExecStart        []string          // the words of ExecStart=, prefixes ("-", "@", ...) removed
	Environment      []string          // KEY=VALUE from Environment=, in order
	EnvironmentFiles []EnvironmentFile // in order
	StateDirectories []string          // relative to /var/lib
	Credentials      []Credential      // LoadCredential=, in order
	User             string
	DynamicUser      bool
}

// ParseUnit reads a unit file (or a drop-in) from r and applies it to u,
// which may already hold the settings of the files read before it. name is
// the unit's name, used in messages and for the %n specifier.
func ParseUnit(u *Unit, name string, r io.Reader) error {
	u.Name = name
	section := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	lineNo := 0
	var pending string // a continued line so far
	pendingStart := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if pending != "" && (line != "" && (line[0] == '#' || line[0] == ';')) {
			continue // comment lines inside a continuation are ignored
		}
		if strings.HasSuffix(line, `\`) {
			if pending == "" {
				pendingStart = lineNo
			}
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		start := lineNo
		if pending != "" {
			line, start = pending+line, pendingStart
			pending = ""
		}
		if line[0] == '[' {
			if !strings.HasSuffix(line, "]") {
				return fmt.Errorf("%w: %s:%d: bad section header %q", ErrSyntax, name, start, line)
			}
			section = line[1 : len(line)-1]
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("%w: %s:%d: no '=' in %q", ErrSyntax, name, start, line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if section == "" {
			return fmt.Errorf("%w: %s:%d: %s= outside a section", ErrSyntax, name, start, key)
		}
		if section != "Service" {
			continue
		}
		if err := u.set(key, value); err != nil {
			return fmt.Errorf("%w: %s:%d: %s=: %v", ErrSyntax, name, start, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if pending != "" {
		return fmt.Errorf("%w: %s:%d: continuation at end of file", ErrSyntax, name, pendingStart)
	}
	return nil
}

// set applies one [Service] setting.
func (u *Unit) set(key, value string) error {
	switch key {
	case "ExecStart":
		if value == "" {
			u.ExecStart = nil
			return nil
		}
		value = strings.TrimLeft(value, "@-:+!")
		words, err := SplitWords(value)
		if err != nil {
			return err
		}
		for i, w := range words {
			if words[i], err = u.specifiers(w); err != nil {
				return err
			}
		}
		if len(words) == 0 {
			return errors.New("no command")
		}
		u.ExecStart = words
	case "Environment":
		if value == "" {
			u.Environment = nil
			return nil
		}
		words, err := SplitWords(value)
		if err != nil {
			return err
		}
		for _, w := range words {
			k, _, ok := strings.Cut(w, "=")
			if !ok || !validEnvName(k) {
				return fmt.Errorf("bad assignment %q", w)
			}
			if w, err = u.specifiers(w); err != nil {
				return err
			}
			u.Environment = append(u.Environment, w)
		}
	case "EnvironmentFile":
		if value == "" {
			u.EnvironmentFiles = nil
			return nil
		}
		f := EnvironmentFile{Path: value}
		if strings.HasPrefix(f.Path, "-") {
			f.Path, f.Optional = f.Path[1:], true
		}
		if !path.IsAbs(f.Path) {
			return fmt.Errorf("%q is not an absolute path", f.Path)
		}
		u.EnvironmentFiles = append(u.EnvironmentFiles, f)
	case "StateDirectory":
		if value == "" {
			u.StateDirectories = nil
			return nil
		}
		words, err := SplitWords(value)
		if err != nil {
			return err
		}
		for _, w := range words {
			w, _, _ = strings.Cut(w, ":") // a ":copy" of the directory is not used here
			if path.IsAbs(w) || strings.Contains(w, "..") {
				return fmt.Errorf("%q must be relative to /var/lib", w)
			}
			u.StateDirectories = append(u.StateDirectories, w)
		}
	case "LoadCredential":
		if value == "" {
			u.Credentials = nil
			return nil
		}
		id, p, ok := strings.Cut(value, ":")
		if !ok || id == "" || strings.Contains(id, "/") {
			return fmt.Errorf("want ID:PATH, got %q", value)
		}
		if !path.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path (credentials from the system store are not supported)", p)
		}
		u.Credentials = append(u.Credentials, Credential{ID: id, Path: p})
	case "User":
		u.User = value
	case "DynamicUser":
		u.DynamicUser = value == "yes" || value == "true" || value == "1" || value == "on"
	}
	return nil
}

// specifiers expands the unit specifiers this package knows: %n (the unit
// name), %N (without its type suffix) and %%.
func (u *Unit) specifiers(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%q ends in '%%'", s)
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 'n':
			b.WriteString(u.Name)
		case 'N':
			b.WriteString(strings.TrimSuffix(u.Name, path.Ext(u.Name)))
		default:
			return "", fmt.Errorf("unsupported specifier %%%c in %q", s[i], s)
		}
	}
	return b.String(), nil
}

// SplitWords splits a unit setting's value into words the way systemd does
// for ExecStart= and Environment=: words are separated by whitespace, "..."
// and '...' quote (the quotes are removed), and C escapes (\n, \t, \\, \",
// \', \s for a space, \xHH) are decoded outside single quotes.
func SplitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("%q ends in a backslash", s)
			}
			i++
			r, n, err := unescape(s[i:])
			if err != nil {
				return nil, fmt.Errorf("%q: %v", s, err)
			}
			cur.WriteString(r)
			i += n - 1
			inWord = true
		case quote == '"':
			if c == '"' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote = c
			inWord = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// unescape decodes the C escape at the start of s (after its backslash) and
// returns it with the number of bytes it used.
func unescape(s string) (string, int, error) {
	switch s[0] {
	case 'n':
		return "\n", 1, nil
	case 't':
		return "\t", 1, nil
	case 'r':
		return "\r", 1, nil
	case 's':
		return " ", 1, nil
	case '\\', '"', '\'', ' ', '$', ';':
		return s[:1], 1, nil
	case 'x':
		if len(s) < 3 {
			return "", 0, errors.New(`short \x escape`)
		}
		var v byte
		if _, err := fmt.Sscanf(s[1:3], "%02x", &v); err != nil {
			return "", 0, fmt.Errorf(`bad \x escape %q`, s[:3])
		}
		return string([]byte{v}), 3, nil
	}
	return "", 0, fmt.Errorf(`unknown escape \%c`, s[0])
}

// ParseEnv reads an environment file (systemd.exec(5), EnvironmentFile=)
// and returns its assignments as KEY=VALUE strings, in file order.
func ParseEnv(r io.Reader) ([]string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var env []string
	s := string(data)
	line := 1
	for len(s) > 0 {
		// Leading whitespace and blank lines.
		c := s[0]
		if c == '\n' {
			line++
			s = s[1:]
			continue
		}
		if c == ' ' || c == '\t' || c == '\r' {
			s = s[1:]
			continue
		}
		if c == '#' || c == ';' {
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				break
			}
			s = s[i:]
			continue
		}
		start := line
		eq := strings.IndexAny(s, "=\n")
		if eq < 0 || s[eq] != '=' {
			l, _, _ := strings.Cut(s, "\n")
			return nil, fmt.Errorf("%w: line %d: no '=' in %q", ErrSyntax, start, l)
		}
		key := strings.TrimSpace(s[:eq])
		if !validEnvName(key) {
			return nil, fmt.Errorf("%w: line %d: bad variable name %q", ErrSyntax, start, key)
		}
		s = s[eq+1:]
		value, rest, lines, err := envValue(s)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %s: %v", ErrSyntax, start, key, err)
		}
		line += lines
		s = rest
		env = append(env, key+"="+value)
	}
	return env, nil
}

// envValue reads one value of an environment file, up to the end of its
// line, and returns it, the rest of the input and how many newlines it used.
func envValue(s string) (value, rest string, lines int, err error) {
	var b strings.Builder
	// Leading whitespace of the value is skipped.
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	trailing := 0 // unquoted trailing whitespace written so far, cut at the end
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\n':
			v := b.String()
			return v[:len(v)-trailing], s[i:], lines, nil
		case '\\':
			if i+1 == len(s) {
				return b.String(), "", lines, nil
			}
			i++
			if s[i] == '\n' {
				lines++ // continuation
				continue
			}
			b.WriteByte(s[i])
			trailing = 0
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return "", "", 0, errors.New("unterminated ' quote")
			}
			q := s[i+1 : i+1+j]
			lines += strings.Count(q, "\n")
			b.WriteString(q)
			trailing = 0
			i += j + 1
		case '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					switch s[i+1] {
					case '"', '\\', '`', '$':
						i++
					case '\n':
						i++
						lines++
						continue
					}
				}
				if s[i] == '\n' {
					lines++
				}
				b.WriteByte(s[i])
			}
			if i == len(s) {
				return "", "", 0, errors.New(`unterminated " quote`)
			}
			trailing = 0
		case ' ', '\t', '\r':
			b.WriteByte(c)
			trailing++
		default:
			b.WriteByte(c)
			trailing = 0
		}
	}
	v := b.String()
	return v[:len(v)-trailing], "", lines, nil
}

// validEnvName reports whether s is a name systemd accepts for a variable.
func validEnvName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ReadEnvFile reads the environment file at path.
func ReadEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env, err := ParseEnv(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return env, nil
}

// Load reads unit name as installed under prefix
// (prefix/etc/systemd/system/name), then its drop-ins
// (prefix/etc/systemd/system/name.d/*.conf) in lexical order.
func Load(prefix, name string) (*Unit, error) {
	files := []string{filepath.Join(prefix, UnitDir, name)}
	dropins, err := filepath.Glob(filepath.Join(prefix, UnitDir, name+".d", "*.conf"))
	if err != nil {
		return nil, err
	}
	sort.Strings(dropins)
	files = append(files, dropins...)
	u := &Unit{}
	for _, file := range files {
		if err := parseFile(u, name, file); err != nil {
			return nil, err
		}
	}
	if len(u.ExecStart) == 0 {
		return nil, fmt.Errorf("%s: no ExecStart=", name)
	}
	return u, nil
}

// ReadUnit reads the unit file at path (without drop-ins); the unit's name
// is the file's base name.
func ReadUnit(path string) (*Unit, error) {
	u := &Unit{}
	if err := parseFile(u, filepath.Base(path), path); err != nil {
		return nil, err
	}
	return u, nil
}

func parseFile(u *Unit, name, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return ParseUnit(u, name, f)
}

// CredentialPath is where the service finds credential id under systemd:
// /run/credentials/<unit>/<id>.
func (u *Unit) CredentialPath(id string) string {
	return "/run/credentials/" + u.Name + "/" + id
}

// Env returns the service's environment as systemd builds it from files
// under prefix: PATH, Environment=, then each environment file (later
// settings win), without rewriting paths.
func (u *Unit) Env(prefix string) ([]string, error) {
	env := []string{"PATH=" + DefaultPath}
	env = append(env, u.Environment...)
	for _, f := range u.EnvironmentFiles {
		vars, err := ReadEnvFile(filepath.Join(prefix, f.Path))
		if errors.Is(err, os.ErrNotExist) && f.Optional {
			continue
		}
		if err != nil {
			return nil, err
		}
		env = append(env, vars...)
	}
	return dedupe(env), nil
}

// dedupe keeps the last assignment of each variable, in the order of
// first appearance.
func dedupe(env []string) []string {
	last := map[string]string{}
	var order []string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, seen := last[k]; !seen {
			order = append(order, k)
		}
		last[k] = v
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+last[k])
	}
	return out
}

// Command returns the command that systemd would run for unit name as
// deploy/provision.sh installed it under prefix, with bin in place of the
// unit's program (blank: the program under prefix). See the package doc for
// what is rewritten.
func Command(prefix, name, bin string) (*exec.Cmd, error) {
	u, err := Load(prefix, name)
	if err != nil {
		return nil, err
	}
	return u.Command(prefix, bin)
}

// Command is the package's Command for a unit already loaded.
func (u *Unit) Command(prefix, bin string) (*exec.Cmd, error) {
	prefix, err := filepath.Abs(prefix)
	if err != nil {
		return nil, err
	}
	env, err := u.Env(prefix)
	if err != nil {
		return nil, err
	}
	var stateDirs []string
	for _, d := range u.StateDirectories {
		dir := filepath.Join(prefix, "var/lib", d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		stateDirs = append(stateDirs, dir)
	}
	rw := u.rewriter(prefix)
	for i, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		env[i] = k + "=" + rw(v)
	}
	if len(stateDirs) > 0 {
		env = append(env, "STATE_DIRECTORY="+strings.Join(stateDirs, ":"))
	}
	args, err := expand(u.ExecStart, env)
	if err != nil {
		return nil, fmt.Errorf("%s: ExecStart=: %w", u.Name, err)
	}
	for i := 1; i < len(args); i++ {
		args[i] = rw(args[i])
	}
	program := bin
	if program == "" {
		program = filepath.Join(prefix, args[0])
	}
	cmd := exec.Command(program, args[1:]...)
	cmd.Env = env
	cmd.Dir = prefix
	return cmd, nil
}

// rewriter returns the function that moves a value naming a path that
// provision.sh installs under the prefix: /etc/..., the state directories,
// and credential paths (to their sources). Each comma-separated part of a
// value is considered, so lists of paths are moved too.
func (u *Unit) rewriter(prefix string) func(string) string {
	creds := map[string]string{}
	for _, c := range u.Credentials {
		creds[u.CredentialPath(c.ID)] = c.Path
	}
	roots := []string{"/etc/"}
	for _, d := range u.StateDirectories {
		roots = append(roots, path.Join("/var/lib", d))
	}
	one := func(v string) string {
		if src, ok := creds[v]; ok {
			return filepath.Join(prefix, src)
		}
		for _, r := range roots {
			if v == r || strings.HasPrefix(v, strings.TrimSuffix(r, "/")+"/") {
				return filepath.Join(prefix, v)
			}
		}
		return v
	}
	return func(v string) string {
		if !strings.Contains(v, "/") {
			return v
		}
		parts := strings.Split(v, ",")
		for i, p := range parts {
			parts[i] = one(p)
		}
		return strings.Join(parts, ",")
	}
}

// expand substitutes the service's variables into ExecStart's words as
// systemd does: ${NAME} within a word, and a word that is exactly $NAME
// split into words at whitespace (dropped when empty).
func expand(words, env []string) ([]string, error) {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, "$") && !strings.HasPrefix(w, "${") && validEnvName(w[1:]) {
			out = append(out, strings.Fields(vars[w[1:]])...)
			continue
		}
		var b strings.Builder
		for {
			i := strings.Index(w, "${")
			if i < 0 {
				b.WriteString(w)
				break
			}
			j := strings.IndexByte(w[i:], '}')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ${ in %q", w)
			}
			b.WriteString(w[:i])
			b.WriteString(vars[w[i+2:i+j]])
			w = w[i+j+1:]
		}
		out = append(out, b.String())
	}
	if len(out) == 0 {
		return nil, errors.New("empty command")
	}
	return out, nil
}
