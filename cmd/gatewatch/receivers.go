package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/file"
	"github.com/gatewatch/gatewatch/alerting/kafkasink"
	"github.com/gatewatch/gatewatch/alerting/slack"
	"github.com/gatewatch/gatewatch/alerting/splunkhec"
	"github.com/gatewatch/gatewatch/alerting/syslog"
	"github.com/gatewatch/gatewatch/alerting/webhook"
	"github.com/gatewatch/gatewatch/internal/pipeline"
)

// slackThreadRetention is how long a Slack receiver remembers an incident's thread
// after the incident went quiet.
const slackThreadRetention = 30 * 24 * time.Hour

// buildReceivers turns the configured receivers into live ones: the one place that
// knows every receiver kind. The returned closer releases their connections and files.
func buildReceivers(ac alerting.Config, env pipeline.ReceiverEnv, logger *slog.Logger) (map[string]alerting.Receiver, io.Closer, error) {
	rs := map[string]alerting.Receiver{}
	var closers closeAll
	var errs []error
	for _, rc := range ac.Receivers {
		log := logger.With("component", "alerting", "receiver", rc.Name)
		var (
			r   alerting.Receiver
			err error
		)
		switch {
		case rc.Slack != nil:
			var file *slack.ThreadFile
			dir := filepath.Join(env.DataDir, "slack")
			if err = os.MkdirAll(dir, 0o700); err == nil {
				file, err = slack.OpenThreadFile(filepath.Join(dir, rc.Name+"-threads.json"), slackThreadRetention)
			}
			if err == nil {
				closers = append(closers, file)
				var threads slack.Threads = file
				if env.SlackThreads != nil {
					threads = slack.Shared(file, env.SlackThreads, rc.Name, log)
				}
				r, err = slack.New(rc.Name, *rc.Slack, slack.Options{Logger: log, ReplayCommand: ac.ReplayCommand, Threads: threads})
			}
		case rc.SplunkHEC != nil:
			r, err = splunkhec.New(rc.Name, *rc.SplunkHEC, splunkhec.Options{Logger: log})
		case rc.Syslog != nil:
			var s *syslog.Receiver
			s, err = syslog.New(rc.Name, *rc.Syslog, syslog.Options{Logger: log})
			if err == nil {
				r = s
				closers = append(closers, s)
			}
		case rc.Kafka != nil:
			var k *kafkasink.Receiver
			k, err = kafkasink.New(rc.Name, *rc.Kafka, kafkasink.Options{Logger: log})
			if err == nil {
				r = k
				closers = append(closers, k)
			}
		case rc.Webhook != nil:
			r, err = webhook.New(rc.Name, *rc.Webhook, webhook.Options{})
		case rc.File != nil:
			var f *file.Receiver
			f, err = file.New(rc.Name, *rc.File)
			if err == nil {
				r = f
				closers = append(closers, f)
			}
		default:
			err = errors.New("no receiver kind set")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("alerting.receivers %q: %w", rc.Name, err))
			continue
		}
		rs[rc.Name] = r
	}
	if err := errors.Join(errs...); err != nil {
		closers.Close()
		return nil, nil, err
	}
	return rs, closers, nil
}

// closeAll closes each of its closers, joining their errors.
type closeAll []io.Closer

func (c closeAll) Close() error {
	var errs []error
	for _, x := range c {
		errs = append(errs, x.Close())
	}
	return errors.Join(errs...)
}
