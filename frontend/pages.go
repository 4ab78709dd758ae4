package frontend

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/memcache/memcache/keyindex"
)

//go:embed templates/*.html
var templateFS embed.FS

// imageURL is the path of key's image, with the key path-escaped. A key
// "." or ".." has its dots escaped too: a browser would resolve the path
// segment away (to /images/ or /) before asking for it.
func imageURL(key string) string {
	if key == "." || key == ".." {
		return "/images/" + strings.Repeat("%2E", len(key))
	}
	return "/images/" + url.PathEscape(key)
}

func retrieveURL(key string) string { return "/retrieve?key=" + url.QueryEscape(key) }

func parsePages() map[string]*template.Template {
	funcs := template.FuncMap{"imageURL": imageURL, "retrieveURL": retrieveURL}
	pages := map[string]*template.Template{}
	for _, name := range []string{"upload", "retrieve", "keys"} {
		pages[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return pages
}

// pageData is what every page template receives.
type pageData struct {
	Title, Page, Error, Notice string
	Key                        string
	MaxUpload                  string
	Entry                      *keyindex.Entry
	ImageURL                   string
	// retrieve
	Found       bool
	FromCache   bool
	ContentType string
	Size        int
	// keys
	Entries []keyindex.Entry
}

func (f *Frontend) render(w http.ResponseWriter, code int, page string, d pageData) {
	d.Page = page
	d.MaxUpload = fmt.Sprintf("%.1f MB", float64(f.cfg.MaxUpload)/(1<<20))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := f.pages[page].ExecuteTemplate(w, page+".html", d); err != nil {
		f.log.Error("rendering page", "page", page, "err", err)
	}
}

func (f *Frontend) pageUpload(w http.ResponseWriter, _ *http.Request) {
	f.render(w, http.StatusOK, "upload", pageData{Title: "Upload"})
}

func (f *Frontend) pageUploadPost(w http.ResponseWriter, r *http.Request) {
	key, data, err := f.readUpload(w, r)
	var e keyindex.Entry
	if err == nil {
		e, err = f.Put(r.Context(), key, data)
	}
	if err != nil {
		code := statusOf(err)
		msg := "Upload refused: " + err.Error()
		switch {
		case code == http.StatusServiceUnavailable:
			w.Header().Set("Retry-After", "1")
			msg = "Upload not completed: " + err.Error()
		case code >= 500:
			f.log.Error("upload failed", "err", err)
			msg = "Upload failed on our side; please try again."
		}
		f.render(w, code, "upload", pageData{Title: "Upload", Error: msg, Key: key})
		return
	}
	f.render(w, http.StatusOK, "upload", pageData{Title: "Upload", Notice: fmt.Sprintf("Stored %q (%d bytes, %s).", e.Key, e.Size, e.ContentType),
		Entry: &e, ImageURL: imageURL(e.Key)})
}

func (f *Frontend) pageRetrieve(w http.ResponseWriter, r *http.Request) {
	key, ok := r.URL.Query()["key"]
	if !ok {
		f.render(w, http.StatusOK, "retrieve", pageData{Title: "Retrieve"})
		return
	}
	d := pageData{Title: "Retrieve", Key: key[0]}
	img, err := f.Get(r.Context(), key[0])
	switch {
	case errors.Is(err, ErrNotFound):
		d.Error = fmt.Sprintf("No image is stored under %q.", key[0])
	case err != nil && statusOf(err) < 500:
		d.Error = "Cannot retrieve: " + err.Error()
	case err != nil:
		f.log.Error("retrieve failed", "err", err)
		d.Error = "Retrieval failed on our side; please try again."
	default:
		d.Found, d.FromCache, d.ContentType, d.Size, d.ImageURL = true, img.FromCache, img.ContentType, len(img.Data), imageURL(key[0])
	}
	code := http.StatusOK
	if err != nil {
		code = statusOf(err)
	}
	f.render(w, code, "retrieve", d)
}

func (f *Frontend) pageKeys(w http.ResponseWriter, r *http.Request) {
	entries, err := f.List(r.Context())
	if err != nil {
		f.log.Error("listing keys", "err", err)
		f.render(w, http.StatusInternalServerError, "keys", pageData{Title: "Keys", Error: "Listing failed on our side; please try again."})
		return
	}
	f.render(w, http.StatusOK, "keys", pageData{Title: "Keys", Entries: entries})
}
