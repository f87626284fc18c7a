package apiserver

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

var pathUnescape = url.PathUnescape

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	v := "/" + api.Version
	svc := s.Service
	mux.HandleFunc("GET "+v+"/version", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK)(svc.Version(r.Context()))
	})
	mux.HandleFunc("GET "+v+"/points", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		answer(w, http.StatusOK)(svc.Points(r.Context(), api.ListRequest{Domain: q.Get("domain"), Target: q.Get("target")}))
	})
	mux.HandleFunc("GET "+v+"/points/{point}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK)(svc.Point(r.Context(), api.PointRequest{Point: r.PathValue("point"), Target: r.URL.Query().Get("target")}))
	})
	post(mux, v+"/backups", http.StatusAccepted, svc.Backup)
	post(mux, v+"/restores", http.StatusAccepted, svc.Restore)
	post(mux, v+"/exports", http.StatusAccepted, svc.Export)
	post(mux, v+"/verifies", http.StatusAccepted, svc.Verify)
	post(mux, v+"/catalog/rebuild", http.StatusAccepted, svc.RebuildCatalog)
	post(mux, v+"/runs", http.StatusAccepted, svc.RunPolicy)
	post(mux, v+"/prunes", http.StatusAccepted, svc.Prune)
	post(mux, v+"/copies", http.StatusAccepted, svc.Copy)
	post(mux, v+"/gcs", http.StatusAccepted, svc.GC)
	post(mux, v+"/protect", http.StatusOK, func(ctx context.Context, r api.ProtectRequest) (struct{}, error) {
		return struct{}{}, svc.Protect(ctx, r)
	})
	mux.HandleFunc("GET "+v+"/policies", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK)(svc.Policies(r.Context()))
	})
	post(mux, v+"/mounts", http.StatusCreated, svc.Mount)
	post(mux, v+"/serves", http.StatusCreated, svc.Serve)
	post(mux, v+"/boots", http.StatusCreated, svc.Boot)
	post(mux, v+"/sessions/end", http.StatusOK, func(ctx context.Context, r api.EndSessionRequest) (struct{}, error) {
		return struct{}{}, svc.EndSession(ctx, r)
	})
	mux.HandleFunc("GET "+v+"/sessions", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK)(svc.Sessions(r.Context()))
	})
	mux.HandleFunc("GET "+v+"/jobs", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		req := api.JobsRequest{All: q.Get("all") == "true", Domain: q.Get("domain")}
		if s := q.Get("since"); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				writeError(w, api.Errorf(api.CodeBadRequest, "since %q: want an RFC 3339 time", s))
				return
			}
			req.Since = t
		}
		answer(w, http.StatusOK)(svc.Jobs(r.Context(), req))
	})
	mux.HandleFunc("GET "+v+"/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK)(svc.Job(r.Context(), r.PathValue("id")))
	})
	mux.HandleFunc("POST "+v+"/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK)(svc.CancelJob(r.Context(), r.PathValue("id")))
	})
	mux.HandleFunc("GET "+v+"/jobs/{id}/watch", func(w http.ResponseWriter, r *http.Request) {
		stream(w, r, func(send func(any) error) error {
			return svc.Watch(r.Context(), r.PathValue("id"), func(j api.Job) error { return send(j) })
		})
	})
	mux.HandleFunc("GET "+v+"/jobs/{id}/log", func(w http.ResponseWriter, r *http.Request) {
		follow := r.URL.Query().Get("follow") == "true"
		stream(w, r, func(send func(any) error) error {
			return svc.Log(r.Context(), r.PathValue("id"), follow, func(l api.LogLine) error { return send(l) })
		})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "no endpoint %s %s (see docs/API.md)", r.Method, r.URL.Path))
	})
	return s.guard(mux)
}

// answer writes a result, or the error.
func answer(w http.ResponseWriter, status int) func(any, error) {
	return func(v any, err error) {
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, status, v)
	}
}

// post routes a POST whose body is the request of fn.
func post[Req, Resp any](mux *http.ServeMux, path string, status int, fn func(context.Context, Req) (Resp, error)) {
	mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := decode(w, r, &req); err != nil {
			writeError(w, err)
			return
		}
		answer(w, status)(fn(r.Context(), req))
	})
}

// stream answers with NDJSON: one value per line, flushed. An error
// before the first line is an ordinary error answer; one after it ends
// the stream with a last line {"error": {...}}.
func stream(w http.ResponseWriter, r *http.Request, run func(send func(any) error) error) {
	started := false
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	err := run(func(v any) error {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if err := enc.Encode(v); err != nil {
			return err
		}
		if fl != nil {
			fl.Flush()
		}
		return nil
	})
	switch {
	case err == nil || r.Context().Err() != nil:
	case !started:
		writeError(w, err)
	default:
		_ = enc.Encode(map[string]api.Error{"error": {Code: api.CodeOf(err), Message: err.Error()}})
	}
}
