// Command helm-render renders a Helm chart's templates the way Helm 3's engine does, for the
// tests (there is no Helm binary here): Go text/template with the sprig function map, Helm's
// own functions (include, tpl, required, toYaml, fromYaml, toJson), .Values merged from
// values.yaml and the given files, .Release, .Chart, .Template and .Files.Get. What it does not
// implement: lookup, .Capabilities, subcharts, hooks and the schema check (the test does that).
//
// Usage: helm-render [-strict] [-release NAME] [-namespace NS] CHART_DIR [VALUES_FILE ...]
// Prints a JSON object {"<chart>/templates/<file>": "<rendered text>"}; errors go to stderr
// with exit code 1. -strict is missingkey=error (Helm's --strict lint): a reference to a value
// values.yaml does not define fails.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

// files is .Files: Get reads a file of the chart by its path relative to the chart root.
type files struct{ root string }

func (f files) Get(name string) string {
	data, err := os.ReadFile(filepath.Join(f.root, filepath.FromSlash(name)))
	if err != nil {
		return ""
	}
	return string(data)
}

// toJSONCompatible turns yaml.v2's map[interface{}]interface{} into what Helm sees: values go
// through sigs.k8s.io/yaml, i.e. YAML → JSON → map[string]interface{} with float64 numbers.
func toJSONCompatible(in interface{}) (interface{}, error) {
	var convert func(v interface{}) interface{}
	convert = func(v interface{}) interface{} {
		switch t := v.(type) {
		case map[interface{}]interface{}:
			out := map[string]interface{}{}
			for k, val := range t {
				out[fmt.Sprint(k)] = convert(val)
			}
			return out
		case []interface{}:
			out := make([]interface{}, len(t))
			for i, val := range t {
				out[i] = convert(val)
			}
			return out
		default:
			return v
		}
	}
	data, err := json.Marshal(convert(in))
	if err != nil {
		return nil, err
	}
	var out interface{}
	err = json.Unmarshal(data, &out)
	return out, err
}

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if raw == nil {
		return map[string]interface{}{}, nil
	}
	value, err := toJSONCompatible(raw)
	if err != nil {
		return nil, err
	}
	out, ok := value.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: not a mapping", path)
	}
	return out, nil
}

// merge is Helm's coalescing of a user values file over the chart's: maps merge key by key,
// anything else (lists included) is replaced; a null removes the key.
func merge(base, over map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		if bm, ok := out[k].(map[string]interface{}); ok {
			if om, ok := v.(map[string]interface{}); ok {
				out[k] = merge(bm, om)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// toYAML is Helm's toYaml: sigs.k8s.io/yaml.Marshal (JSON, then yaml.v2), trailing newline cut.
func toYAML(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return ""
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(text string) map[string]interface{} {
	var raw interface{}
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	value, err := toJSONCompatible(raw)
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	m, _ := value.(map[string]interface{})
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

// required is Helm's: nil, or an empty string, fails with the message.
func required(warn string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, fmt.Errorf(warn)
	}
	if s, ok := val.(string); ok && s == "" {
		return val, fmt.Errorf(warn)
	}
	return val, nil
}

func main() {
	strict := flag.Bool("strict", false, "missingkey=error")
	release := flag.String("release", "shield", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: helm-render [-strict] [-release NAME] [-namespace NS] CHART_DIR [VALUES ...]")
		os.Exit(2)
	}
	if err := run(*strict, *release, *namespace, flag.Arg(0), flag.Args()[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(strict bool, release, namespace, chartDir string, valueFiles []string) error {
	chartMeta, err := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	chartName, _ := chartMeta["name"].(string)
	values, err := readYAML(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, file := range valueFiles {
		over, err := readYAML(file)
		if err != nil {
			return err
		}
		values = merge(values, over)
	}

	root := template.New("gotpl")
	if strict {
		root.Option("missingkey=error")
	} else {
		root.Option("missingkey=zero")
	}
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["required"] = required
	// include and tpl run templates of the same set, as Helm's do.
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	root.Funcs(funcs)

	templatesDir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(templatesDir)
	if err != nil {
		return err
	}
	var names []string
	for _, entry := range entries {
		if entry.IsDir() {
			continue
		}
		name := chartName + "/templates/" + entry.Name()
		text, err := os.ReadFile(filepath.Join(templatesDir, entry.Name()))
		if err != nil {
			return err
		}
		if _, err := root.New(name).Parse(string(text)); err != nil {
			return err
		}
		names = append(names, name)
	}
	sort.Strings(names)

	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chartMeta["name"], "Version": chartMeta["version"],
			"AppVersion": chartMeta["appVersion"], "Description": chartMeta["description"],
			"Type": chartMeta["type"],
		},
		"Files": files{root: chartDir},
	}

	out := map[string]string{}
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return err
		}
		out[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	encoded, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(encoded)
	return err
}
