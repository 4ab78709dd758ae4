package systemd

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"plain", "A=1\nB=two\n", []string{"A=1", "B=two"}},
		{"no final newline", "A=1", []string{"A=1"}},
		{"comments and blanks", "# c\n; also\n\n  A=1\n#B=2\n", []string{"A=1"}},
		{"hash inside a value", "A=x#y\n", []string{"A=x#y"}},
		{"spaces around", "  A  =   v w  \n", []string{"A=v w"}},
		{"empty value", "A=\nB=\"\"\n", []string{"A=", "B="}},
		{"double quotes", `A="x y"` + "\n", []string{"A=x y"}},
		{"double quote escapes", `A="q\"b\\s\$d\x"` + "\n", []string{`A=q"b\s$d\x`}},
		{"single quotes literal", `A='x\"y $z'` + "\n", []string{`A=x\"y $z`}},
		{"quotes inside a word", `A=a"b c"d'e f'` + "\n", []string{"A=ab cde f"}},
		{"quoted keeps spaces", `A="  x  "` + "\n", []string{"A=  x  "}},
		{"unquoted escape", `A=a\ b\\c` + "\n", []string{`A=a b\c`}},
		{"continuation", "A=one \\\ntwo\nB=3\n", []string{"A=one two", "B=3"}},
		{"continuation in double quotes", "A=\"one\\\ntwo\"\n", []string{"A=onetwo"}},
		{"newline in single quotes", "A='one\ntwo'\nB=3\n", []string{"A=one\ntwo", "B=3"}},
		{"CRLF", "A=1\r\nB=2\r\n", []string{"A=1", "B=2"}},
		{"equals in value", "DSN=postgres://u:p@h/db?sslmode=require&x=y\n", []string{"DSN=postgres://u:p@h/db?sslmode=require&x=y"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnv(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("ParseEnv(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseEnv(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseEnvErrors(t *testing.T) {
	for _, in := range []string{
		"no equals sign\n",
		"1A=x\n",
		"A-B=x\n",
		"A=\"open\n",
		"A='open\n",
		"=x\n",
	} {
		if got, err := ParseEnv(strings.NewReader(in)); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseEnv(%q) = %q, %v; want an ErrSyntax", in, got, err)
		}
	}
}

func TestSplitWords(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"a b  c", []string{"a", "b", "c"}},
		{`"a b" c`, []string{"a b", "c"}},
		{`'a "b"' c`, []string{`a "b"`, "c"}},
		{`a\sb c\\d`, []string{"a b", `c\d`}},
		{`"x\"y"`, []string{`x"y`}},
		{`""`, []string{""}},
		{`A="x y" B=z`, []string{"A=x y", "B=z"}},
		{`\x41`, []string{"A"}},
	}
	for _, tt := range tests {
		got, err := SplitWords(tt.in)
		if err != nil {
			t.Errorf("SplitWords(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitWords(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	for _, in := range []string{`"open`, `'open`, `end\`, `\q`} {
		if got, err := SplitWords(in); err == nil {
			t.Errorf("SplitWords(%q) = %q, want an error", in, got)
		}
	}
}

const testUnit = `# A comment
[Unit]
Description=Test = with equals
After=network-online.target

[Service]
; another comment
Environment=A=1 "B=two words"
Environment=C=%n
EnvironmentFile=/etc/memcache/role.env
EnvironmentFile=-/etc/memcache/optional.env
ExecStart=/usr/local/bin/memcache role \
  # comments inside a continuation are skipped
  --flag "quoted value"
StateDirectory=memcache/role
LoadCredential=tls-key:/etc/memcache/tls/role-key.pem
DynamicUser=yes

[Install]
WantedBy=multi-user.target
ExecStart=/not/a/service/setting
`

func TestParseUnit(t *testing.T) {
	u := &Unit{}
	if err := ParseUnit(u, "memcache-role.service", strings.NewReader(testUnit)); err != nil {
		t.Fatal(err)
	}
	want := &Unit{
		Name:        "memcache-role.service",
		ExecStart:   []string{"/usr/local/bin/memcache", "role", "--flag", "quoted value"},
		Environment: []string{"A=1", "B=two words", "C=memcache-role.service"},
		EnvironmentFiles: []EnvironmentFile{
			{Path: "/etc/memcache/role.env"},
			{Path: "/etc/memcache/optional.env", Optional: true},
		},
		StateDirectories: []string{"memcache/role"},
		Credentials:      []Credential{{ID: "tls-key", Path: "/etc/memcache/tls/role-key.pem"}},
		DynamicUser:      true,
	}
	if !reflect.DeepEqual(u, want) {
		t.Errorf("got  %+v\nwant %+v", u, want)
	}
}

func TestParseUnitResetAndPrefixes(t *testing.T) {
	u := &Unit{}
	if err := ParseUnit(u, "x.service", strings.NewReader(testUnit)); err != nil {
		t.Fatal(err)
	}
	dropin := "[Service]\nEnvironment=\nEnvironment=D=4\nExecStart=\nExecStart=-/bin/other --x\n"
	if err := ParseUnit(u, "x.service", strings.NewReader(dropin)); err != nil {
		t.Fatal(err)
	}
	if got, want := u.Environment, []string{"D=4"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Environment: got %q, want %q", got, want)
	}
	if got, want := u.ExecStart, []string{"/bin/other", "--x"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ExecStart: got %q, want %q", got, want)
	}
}

func TestParseUnitErrors(t *testing.T) {
	for _, in := range []string{
		"ExecStart=/bin/x\n",                   // outside a section
		"[Service\nExecStart=/bin/x\n",         // bad header
		"[Service]\nnot an assignment\n",       // no '='
		"[Service]\nEnvironmentFile=rel.env\n", // relative path
		"[Service]\nEnvironment=not-an-assignment\n",
		"[Service]\nExecStart=/bin/x \"open\n",
		"[Service]\nExecStart=/bin/x %i\n",
		"[Service]\nLoadCredential=nopath\n",
		"[Service]\nExecStart=/bin/x \\\n",
	} {
		if err := ParseUnit(&Unit{}, "x.service", strings.NewReader(in)); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseUnit(%q): got %v, want an ErrSyntax", in, err)
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCommand(t *testing.T) {
	prefix := t.TempDir()
	write(t, filepath.Join(prefix, "etc/systemd/system/memcache-role.service"), testUnit)
	write(t, filepath.Join(prefix, "etc/systemd/system/memcache-role.service.d/10-extra.conf"),
		"[Service]\nEnvironment=E=${A}\nExecStart=\nExecStart=/usr/local/bin/memcache role --dir ${MEMCACHE_DATA_DIR} $WORDS --empty=${NOPE}\n")
	write(t, filepath.Join(prefix, "etc/memcache/role.env"), `
A=from-file
MEMCACHE_DATA_DIR=/var/lib/memcache/role
MEMCACHE_TLS_KEY=/run/credentials/memcache-role.service/tls-key
MEMCACHE_TLS_CA=/etc/memcache/tls/ca.pem
MEMCACHE_JOIN=10.0.0.1:7400,10.0.0.2:7400
MEMCACHE_DB=postgres://u:p@10.0.0.9/db
OTHER=/var/lib/other
WORDS="a  b"
`)
	cmd, err := Command(prefix, "memcache-role.service", "/tmp/bin/memcache")
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := []string{"/tmp/bin/memcache", "role", "--dir", filepath.Join(prefix, "var/lib/memcache/role"), "a", "b", "--empty="}
	if !reflect.DeepEqual(cmd.Args, wantArgs) {
		t.Errorf("Args: got %q, want %q", cmd.Args, wantArgs)
	}
	if cmd.Path != "/tmp/bin/memcache" || cmd.Dir != prefix {
		t.Errorf("Path, Dir: got %q, %q; want /tmp/bin/memcache, %q", cmd.Path, cmd.Dir, prefix)
	}
	for _, want := range []string{
		"PATH=" + DefaultPath,
		"A=from-file", // the environment file wins over Environment=
		"B=two words",
		"MEMCACHE_DATA_DIR=" + filepath.Join(prefix, "var/lib/memcache/role"),
		"MEMCACHE_TLS_KEY=" + filepath.Join(prefix, "etc/memcache/tls/role-key.pem"),
		"MEMCACHE_TLS_CA=" + filepath.Join(prefix, "etc/memcache/tls/ca.pem"),
		"MEMCACHE_JOIN=10.0.0.1:7400,10.0.0.2:7400",
		"MEMCACHE_DB=postgres://u:p@10.0.0.9/db",
		"OTHER=/var/lib/other", // not a state directory of this unit
		"STATE_DIRECTORY=" + filepath.Join(prefix, "var/lib/memcache/role"),
	} {
		if !slices.Contains(cmd.Env, want) {
			t.Errorf("Env lacks %q; got %q", want, cmd.Env)
		}
	}
	if fi, err := os.Stat(filepath.Join(prefix, "var/lib/memcache/role")); err != nil || !fi.IsDir() {
		t.Errorf("state directory not created: %v", err)
	}

	// Without a binary, the program under the prefix.
	cmd, err = Command(prefix, "memcache-role.service", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(prefix, "usr/local/bin/memcache"); cmd.Path != want {
		t.Errorf("Path: got %q, want %q", cmd.Path, want)
	}
}

func TestCommandMissingFiles(t *testing.T) {
	prefix := t.TempDir()
	if _, err := Command(prefix, "absent.service", ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing unit: got %v, want ErrNotExist", err)
	}
	// The environment file without '-' must exist; the optional one need not.
	write(t, filepath.Join(prefix, "etc/systemd/system/r.service"), testUnit)
	if _, err := Command(prefix, "r.service", ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing environment file: got %v, want ErrNotExist", err)
	}
	write(t, filepath.Join(prefix, "etc/memcache/role.env"), "A=1\n")
	if _, err := Command(prefix, "r.service", ""); err != nil {
		t.Errorf("optional environment file absent: %v", err)
	}
}
