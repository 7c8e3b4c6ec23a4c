// main.go — WeChat callback on Go's standard library only (net/http, crypto/sha1,
// encoding/xml), run behind nginx proxy_pass: verify the signature, parse the XML,
// reply with a text message echoing Content. Token "benchtoken"; no timestamp window.
//
// Usage: go-callback 127.0.0.1:PORT
package main

import (
	"crypto/sha1"
	"crypto/subtle"
	"encoding/hex"
	"encoding/xml"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

const token = "benchtoken"

type message struct {
	XMLName      xml.Name `xml:"xml"`
	ToUserName   string   `xml:"ToUserName"`
	FromUserName string   `xml:"FromUserName"`
	CreateTime   int64    `xml:"CreateTime"`
	MsgType      string   `xml:"MsgType"`
	Content      string   `xml:"Content"`
	MsgID        int64    `xml:"MsgId"`
}

type cdata struct {
	Text string `xml:",cdata"`
}

type textReply struct {
	XMLName      xml.Name `xml:"xml"`
	ToUserName   cdata    `xml:"ToUserName"`
	FromUserName cdata    `xml:"FromUserName"`
	CreateTime   int64    `xml:"CreateTime"`
	MsgType      cdata    `xml:"MsgType"`
	Content      cdata    `xml:"Content"`
}

func signatureOK(q map[string][]string) bool {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	parts := []string{token, get("timestamp"), get("nonce")}
	sort.Strings(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	want := hex.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(want), []byte(get("signature"))) == 1
}

func handle(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !signatureOK(q) {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodGet {
		io.WriteString(w, q.Get("echostr"))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if err != nil {
		http.Error(w, "read error", http.StatusBadRequest)
		return
	}
	var m message
	if err := xml.Unmarshal(body, &m); err != nil {
		http.Error(w, "bad xml", http.StatusBadRequest)
		return
	}
	if m.MsgType != "text" {
		io.WriteString(w, "success")
		return
	}
	out, err := xml.Marshal(textReply{
		ToUserName:   cdata{m.FromUserName},
		FromUserName: cdata{m.ToUserName},
		CreateTime:   time.Now().Unix(),
		MsgType:      cdata{"text"},
		Content:      cdata{"You said: " + m.Content},
	})
	if err != nil {
		http.Error(w, "encode error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Write(out)
}

func main() {
	addr := "127.0.0.1:8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	http.HandleFunc("/weixin", handle)
	log.Fatal(http.ListenAndServe(addr, nil))
}
