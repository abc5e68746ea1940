package slacktest

import (
	"context"
	"fmt"
	"testing"
	"time"

	slackgo "github.com/slack-go/slack"
)

// TestHistory: conversations.history through slack-go answers as Slack does: top-level
// messages and broadcast replies, newest first, paged with has_more and next_cursor,
// bounded by oldest and latest, metadata only with include_all_metadata, ids only.
func TestHistory(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	s := New(t, Options{Now: func() time.Time { return t0 }})
	api := slackgo.New(DefaultToken, slackgo.OptionAPIURL(s.URL))
	ctx := context.Background()
	var ts []string // top-level, in posting order
	for i := range 5 {
		_, m, err := api.PostMessageContext(ctx, "#soc-alerts", slackgo.MsgOptionText(fmt.Sprint("m", i), false),
			slackgo.MsgOptionMetadata(slackgo.SlackMetadata{EventType: "e", EventPayload: map[string]any{"n": i}}))
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, m)
	}
	if _, _, err := api.PostMessageContext(ctx, "C0SOCALERTS", slackgo.MsgOptionText("reply", false), slackgo.MsgOptionTS(ts[0])); err != nil {
		t.Fatal(err)
	}
	_, bc, err := api.PostMessageContext(ctx, "C0SOCALERTS", slackgo.MsgOptionText("broadcast", false), slackgo.MsgOptionTS(ts[1]), slackgo.MsgOptionBroadcast())
	if err != nil {
		t.Fatal(err)
	}
	all := []string{bc, ts[4], ts[3], ts[2], ts[1], ts[0]} // newest first, no plain reply

	for _, tc := range []struct {
		name   string
		p      slackgo.GetConversationHistoryParameters
		want   []string
		meta   bool
		errStr string
	}{
		{name: "all, newest first", p: slackgo.GetConversationHistoryParameters{}, want: all},
		{name: "paged by 2", p: slackgo.GetConversationHistoryParameters{Limit: 2, IncludeAllMetadata: true}, want: all, meta: true},
		{name: "oldest and latest exclusive", p: slackgo.GetConversationHistoryParameters{Oldest: ts[1], Latest: ts[4]}, want: []string{ts[3], ts[2]}},
		{name: "inclusive", p: slackgo.GetConversationHistoryParameters{Oldest: ts[1], Latest: ts[4], Inclusive: true, Limit: 1}, want: []string{ts[4], ts[3], ts[2], ts[1]}},
		{name: "whole seconds", p: slackgo.GetConversationHistoryParameters{Oldest: "1699999999", Latest: "1700000001"}, want: all},
		{name: "a channel name", p: slackgo.GetConversationHistoryParameters{ChannelID: "#soc-alerts"}, errStr: "channel_not_found"},
		{name: "a bad oldest", p: slackgo.GetConversationHistoryParameters{Oldest: "yesterday"}, errStr: "invalid_ts_oldest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			if p.ChannelID == "" {
				p.ChannelID = "C0SOCALERTS"
			}
			var got []string
			for pages := 0; ; pages++ {
				h, err := api.GetConversationHistoryContext(ctx, &p)
				if tc.errStr != "" {
					if err == nil || err.Error() != tc.errStr {
						t.Fatalf("history = %v, want %s", err, tc.errStr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if p.Limit > 0 && len(h.Messages) > p.Limit {
					t.Fatalf("a page of %d messages, limit %d", len(h.Messages), p.Limit)
				}
				for _, m := range h.Messages {
					got = append(got, m.Timestamp)
					if hasMeta := m.Metadata.EventType != ""; hasMeta != (tc.meta && m.Text != "broadcast") {
						t.Errorf("message %s has metadata %+v, include_all_metadata %v", m.Text, m.Metadata, tc.meta)
					}
				}
				if h.HasMore != (h.ResponseMetaData.NextCursor != "") || !h.HasMore {
					break
				}
				if pages > len(all) {
					t.Fatal("history pages without end")
				}
				p.Cursor = h.ResponseMetaData.NextCursor
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("history = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestConversationsList: the channels by id, paged.
func TestConversationsList(t *testing.T) {
	s := New(t, Options{Channels: map[string]string{"a": "C0A", "b": "C0B", "c": "C0C"}})
	api := slackgo.New(DefaultToken, slackgo.OptionAPIURL(s.URL))
	p := &slackgo.GetConversationsParameters{Limit: 2}
	var got []string
	for {
		chans, next, err := api.GetConversationsContext(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chans {
			got = append(got, c.Name+"="+c.ID)
		}
		if next == "" {
			break
		}
		p.Cursor = next
	}
	if fmt.Sprint(got) != "[a=C0A b=C0B c=C0C]" {
		t.Errorf("conversations.list = %v", got)
	}
}
