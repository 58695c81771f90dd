// Package ini reads the INI dialect of chatmail.ini (Python configparser):
// [sections], "key = value" lines, full-line # or ; comments, and indented
// continuation lines. Every value remembers its line, so that a bad setting
// can be reported as file:line.
package ini

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"chatmail-edge/internal/filelimit"
)

// File is a parsed INI file.
type File struct {
	Path     string
	Sections []*Section
}

type Section struct {
	Name string // "" for keys before the first [section]
	Line int
	Keys []*Value
}

type Value struct {
	Key   string // lower-cased, as configparser does
	Value string
	Line  int
}

// Error is a problem at a given place of a file.
type Error struct {
	Path string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg) }

// Errorf reports a problem with v in f.
func (f *File) Errorf(v *Value, format string, args ...any) error {
	return &Error{Path: f.Path, Line: v.Line, Msg: fmt.Sprintf(format, args...)}
}

// ReadFile reads and parses path, which may hold at most
// filelimit.Config bytes.
func ReadFile(path string) (*File, error) {
	data, err := filelimit.ReadFile(path, filelimit.Config)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses data; path is only used in errors. The text must be UTF-8
// without NUL or other control characters but tab (Python's configparser
// reads chatmail.ini as UTF-8 text; a control character in a value is a
// damaged file, never a setting).
func Parse(path string, data []byte) (*File, error) {
	f := &File{Path: path}
	cur := &Section{Line: 0}
	var last *Value
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), filelimit.Config)
	for n := 1; sc.Scan(); n++ {
		if err := checkText(sc.Text()); err != nil {
			return nil, &Error{path, n, err.Error()}
		}
		raw := strings.TrimRight(sc.Text(), " \t\r")
		line := strings.TrimSpace(raw)
		if n == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			last = nil
			continue
		case raw[0] == ' ' || raw[0] == '\t':
			if last == nil {
				return nil, &Error{path, n, "indented line does not continue a value"}
			}
			last.Value = strings.TrimSpace(last.Value + "\n" + line)
			continue
		case line[0] == '[':
			name, ok := strings.CutSuffix(line[1:], "]")
			if name = strings.TrimSpace(name); !ok || name == "" {
				return nil, &Error{path, n, fmt.Sprintf("malformed section header %q", line)}
			}
			if len(cur.Keys) > 0 || cur.Name != "" {
				f.Sections = append(f.Sections, cur)
			}
			if f.Section(name) != nil {
				return nil, &Error{path, n, fmt.Sprintf("section [%s] appears twice", name)}
			}
			cur = &Section{Name: name, Line: n}
			last = nil
			continue
		}
		// The first "=" or ":" ends the key, as in configparser.
		i := strings.IndexAny(line, "=:")
		if i <= 0 || strings.TrimSpace(line[:i]) == "" {
			return nil, &Error{path, n, fmt.Sprintf("expected \"key = value\", got %q", line)}
		}
		key, val := strings.ToLower(strings.TrimSpace(line[:i])), line[i+1:]
		for _, v := range cur.Keys {
			if v.Key == key {
				return nil, &Error{path, n, fmt.Sprintf("key %q already set on line %d", key, v.Line)}
			}
		}
		last = &Value{Key: key, Value: strings.TrimSpace(val), Line: n}
		cur.Keys = append(cur.Keys, last)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(cur.Keys) > 0 || cur.Name != "" {
		f.Sections = append(f.Sections, cur)
	}
	return f, nil
}

// Section returns the named section, or nil.
func (f *File) Section(name string) *Section {
	for _, s := range f.Sections {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Get returns the value of key in section, or nil.
func (f *File) Get(section, key string) *Value {
	s := f.Section(section)
	if s == nil {
		return nil
	}
	for _, v := range s.Keys {
		if v.Key == key {
			return v
		}
	}
	return nil
}

// checkText refuses what a text line of a configuration file never holds:
// bytes that are not UTF-8, and control characters other than tab (the
// scanner has taken off a CRLF line's carriage return).
func checkText(line string) error {
	if !utf8.ValidString(line) {
		return errors.New("not UTF-8 text")
	}
	for _, r := range line {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return fmt.Errorf("control character %U in the text", r)
		}
	}
	return nil
}
